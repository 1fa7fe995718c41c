"""The renderer: primary rays, cast shadows, textures and shading of every sample, and the
finished 8-bit image."""

from __future__ import annotations

import numpy as np

from benchmark.data.synthetic.camera import _NS, _Camera
from benchmark.data.synthetic.constants import FLOOR_RADIUS
from benchmark.data.synthetic.geometry import _interval, _normal
from benchmark.data.synthetic.sampling import _Scene
from benchmark.data.synthetic.textures import _pattern

_EPS = 1e-4


def _group(ids: np.ndarray, count: int):
    """Indices of `ids` per value 0..count-1, as a list of arrays."""
    order = np.argsort(ids, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(ids, minlength=count))])
    return [order[bounds[i]:bounds[i + 1]] for i in range(count)]


def _trace(sc: _Scene, cam: _Camera, ground: bool):
    """Primary rays: depth parameter t and primitive index per sample (-1 sky, -2 ground)."""
    dx, dy, dz = cam.rays()
    shape = dx.shape
    t = np.full(shape, np.inf)
    pid = np.full(shape, -1, dtype=np.int32)
    if ground:
        tg = cam.height / dy
        hit = (dy > 0) & ((tg * dx) ** 2 + (tg * dz) ** 2 < FLOOR_RADIUS ** 2)
        t[hit] = tg[hit]
        pid[hit] = -2
    for k, pr in enumerate(sc.prims):
        v0, v1, u0, u1 = cam.screen_box(pr.bc, pr.br)
        if v0 >= v1 or u0 >= u1:
            continue
        box = (slice(None), slice(v0, v1), slice(u0, u1))
        near, far = _interval(pr, 0.0, 0.0, 0.0, dx[box], dy[box], dz[box])
        tb = t[box]
        closer = (near <= far) & (near > 1e-3) & (near < tb)
        tb[closer] = near[closer]
        pid[box][closer] = k
    return (dx, dy, dz), t, pid


def _shadowed(sc: _Scene, px, py, pz, nx, ny, nz, own):
    """Whether each lit point sees the light blocked by a primitive other than its own."""
    L = sc.light
    e1 = np.cross(L, [0.0, 0.0, 1.0] if abs(L[2]) < 0.9 else [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(L, e1)
    ox, oy, oz = px + _EPS * nx, py + _EPS * ny, pz + _EPS * nz
    a = ox * e1[0] + oy * e1[1] + oz * e1[2]
    b = ox * e2[0] + oy * e2[1] + oz * e2[2]
    s = ox * L[0] + oy * L[1] + oz * L[2]
    shadow = np.zeros(px.shape, dtype=bool)
    for k, pr in enumerate(sc.prims):
        c = pr.bc
        ca, cb, cs = c @ e1, c @ e2, c @ L
        cand = ((a - ca) ** 2 + (b - cb) ** 2 < pr.br ** 2) & (s < cs + pr.br) & (own != k)
        cand &= ~shadow
        idx = np.flatnonzero(cand)
        if idx.size == 0:
            continue
        near, far = _interval(pr, ox[idx], oy[idx], oz[idx], L[0], L[1], L[2])
        shadow[idx[(near <= far) & (far > _EPS)]] = True
    return shadow


def _render(sc: _Scene, cam: _Camera, ground: bool, shadows: bool, background=None):
    """Colour samples (samples, n, n, 3) in [0, 1] and the hit data of every sample."""
    n = cam.n
    (dx, dy, dz), t, pid = _trace(sc, cam, ground)
    dx, dy, dz, t, pid = dx.ravel(), dy.ravel(), dz.ravel(), t.ravel(), pid.ravel()
    hit = np.flatnonzero(pid != -1)
    th = t[hit]
    px, py, pz = th * dx[hit], th * dy[hit], th * dz[hit]
    ph = pid[hit]
    nx, ny, nz = np.zeros_like(px), np.full_like(px, -1.0), np.zeros_like(px)  # ground: up
    obj = ph >= 0
    groups = _group(np.where(obj, ph, len(sc.prims)), len(sc.prims) + 1)
    for k, pr in enumerate(sc.prims):
        g = groups[k]
        if g.size:
            nx[g], ny[g], nz[g] = _normal(pr, px[g], py[g], pz[g])
    # Orient every normal towards the camera (a guard against grazing hits at face seams).
    vlen = np.sqrt(dx[hit] ** 2 + dy[hit] ** 2 + dz[hit] ** 2)
    vx, vy, vz = dx[hit] / vlen, dy[hit] / vlen, dz[hit] / vlen
    facing = nx * vx + ny * vy + nz * vz
    bad = facing > -1e-3
    if bad.any():
        fix = facing[bad] + 1e-3
        nx[bad] -= fix * vx[bad]
        ny[bad] -= fix * vy[bad]
        nz[bad] -= fix * vz[bad]
        inv = 1.0 / np.sqrt(nx[bad] ** 2 + ny[bad] ** 2 + nz[bad] ** 2)
        nx[bad] *= inv
        ny[bad] *= inv
        nz[bad] *= inv

    # Albedo per instance.
    albedo = np.empty((hit.size, 3))
    inst_of = np.array([1] + [p.inst for p in sc.prims], dtype=np.int32)  # index pid + 1 (-2 -> 1)
    inst = np.where(obj, inst_of[np.maximum(ph, -1) + 1], 1)
    part_of = np.array([p.part for p in sc.prims] + [0], dtype=np.int32)
    ks = np.zeros(hit.size)
    shin = np.full(hit.size, 16.0)
    inst_groups = _group(inst, len(sc.materials))
    for i, g in enumerate(inst_groups):
        if g.size == 0:
            continue
        if i == 1:
            name, prm, colours = sc.ground
            m = _pattern(name, prm, px[g], py[g], pz[g])
            albedo[g] = colours[0] + (colours[1] - colours[0]) * m[:, None]
            ks[g] = 0.05
            continue
        mat = sc.materials[i]
        fc, fR = mat.frame_c, mat.frame_R
        qx, qy, qz = px[g] - fc[0], py[g] - fc[1], pz[g] - fc[2]
        lx = fR[0, 0] * qx + fR[1, 0] * qy + fR[2, 0] * qz
        ly = fR[0, 1] * qx + fR[1, 1] * qy + fR[2, 1] * qz
        lz = fR[0, 2] * qx + fR[1, 2] * qy + fR[2, 2] * qz
        m = _pattern(mat.pattern, mat.prm, lx, ly, lz)[:, None]
        if mat.colours.ndim == 3:  # per part
            pair = mat.colours[part_of[ph[g]]]
            albedo[g] = pair[:, 0] + (pair[:, 1] - pair[:, 0]) * m
        else:
            albedo[g] = mat.colours[0] + (mat.colours[1] - mat.colours[0]) * m
        ks[g] = mat.ks
        shin[g] = mat.shininess

    # Lighting.
    L = sc.light
    lambert = nx * L[0] + ny * L[1] + nz * L[2]
    lit = lambert > 0
    light = np.where(lit, lambert, 0.0)
    if shadows and sc.prims:
        li = np.flatnonzero(lit)
        own = np.where(obj[li], ph[li], -1)
        sh = _shadowed(sc, px[li], py[li], pz[li], nx[li], ny[li], nz[li], own)
        light[li[sh]] = 0.0
    hx, hy, hz = L[0] - vx, L[1] - vy, L[2] - vz
    hl = np.sqrt(hx * hx + hy * hy + hz * hz)
    spec = np.maximum((nx * hx + ny * hy + nz * hz) / hl, 0.0) ** shin * ks * (light > 0)
    lin = albedo ** 2.2
    colour = lin * (sc.ambient + sc.light_colour * light[:, None])
    colour += spec[:, None] * sc.light_colour
    if np.isfinite(sc.fog):
        keep = np.exp(-(th * vlen) / sc.fog)[:, None]
        colour = colour * keep + (sc.sky[0] ** 2.2) * (1.0 - keep)

    out = np.empty((dx.size, 3))
    if background is None:
        elev = np.clip(-dy / np.sqrt(dx * dx + dy * dy + dz * dz), 0.0, 1.0)
        w = np.sqrt(np.clip(elev / 0.6, 0.0, 1.0))[:, None]
        out[:] = (sc.sky[0] + (sc.sky[1] - sc.sky[0]) * w) ** 2.2
    else:
        out[:] = np.broadcast_to(background[None] ** 2.2, (_NS, n, n, 3)).reshape(-1, 3)
    out[hit] = colour
    normals = np.stack([nx, ny, nz], axis=1)
    return out.reshape(_NS, n, n, 3), t, pid, hit, normals


def _finish_image(samples: np.ndarray, noise: float, rng) -> np.ndarray:
    img = np.clip(samples.mean(axis=0), 0.0, None) ** (1.0 / 2.2)
    img = img + rng.normal(0.0, noise, size=img.shape)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
