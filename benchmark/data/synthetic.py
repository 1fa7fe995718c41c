"""The embedded synthetic benchmark: ray-cast scenes with exact dense labels.

Scene model
-----------
Every image is rendered by casting rays against analytic primitives with numpy, one
vectorised pass per primitive over the pixels it can cover (a screen-space bound of its
bounding sphere), so every label is exact at the pixel centres.

* Camera: a pinhole at the origin in the OpenCV camera frame (x right, y down, z forward),
  square pixels, principal point at the image centre. Per scene the horizontal field of view
  (50-65 degrees), the height above the ground (1.2-2.0 m) and the downward pitch (10-20
  degrees) vary. `camera_intrinsics` returns the 3x3 matrix K of a scene; the ray through
  pixel (u, v) is K^-1 (u + 0.5, v + 0.5, 1).
* Ground: a horizontal plane below the camera, a disc of radius `FLOOR_RADIUS` (30 m, measured
  horizontally from the camera). Beyond it, and above the horizon, is sky: no geometry.
* Shapes (`SHAPE_CLASSES`): sphere, box (rotated about the vertical only), cylinder (upright
  or lying on its side), cone (apex up), ellipsoid (one axis stretched 1.6-2.5x, rotated about
  the vertical) and square pyramid, 3-6 per scene, 0.2-0.9 m in their half extents, 1.8-8 m
  from the camera; a quarter of them float 0.1-0.6 m above the ground, the rest stand on it.
* Figures (the person analogue, 0-3 per scene, present in about 60 % of the images):
  articulated bodies of height 1.5-2.0 m made of a head (sphere), a torso (ellipsoid,
  leaning), upper and lower arms and legs (capsules) with random shoulder, elbow, hip and knee
  angles, yaw and position (2.2-7 m away). They stand on the ground (their lowest point
  touches it).
* Appearance: colours and textures are drawn independently of the class, so only shape
  identifies a class. Object textures are solid (3D) patterns in the object's own frame:
  checker, stripes, dots or blotchy noise (a sum of random sinusoids), each in two random
  colours. Figures wear per-figure colours on head / shirt / sleeves / trousers groups. The
  ground gets tiles, stripes, noise or a plain colour; the sky a two-colour gradient. Shading
  is Lambertian under one random directional light plus ambient, with a Blinn-Phong specular
  term, cast shadows (a shadow ray from every lit point against every other primitive) and
  distance fog towards the horizon colour, then gamma and mild Gaussian sensor noise.
* Anti-aliasing: each pixel averages five rays (the pixel centre and a rotated 4-sample grid
  at offsets of 1/8 and 3/8 pixel); every label comes from the centre ray alone.

Labels (H x W per image)
------------------------
* `semseg` uint8: the class of what the centre ray hits first: 0 background (ground and
  sky), 1 figure, 2.. the shapes in `SHAPE_CLASSES` order (see `SEMSEG_CLASSES`).
* `human_parts` uint8: if any figure pixel is visible, 0 everywhere except figure pixels,
  which carry the part id (1 head, 2 torso, 3 upper arm, 4 lower arm, 5 upper leg, 6 lower
  leg); if no figure pixel is visible, 255 (ignored) everywhere.
* `sal` uint8: 1 on the visible pixels of every object (shape or figure) whose ground
  position lies less than `SALIENT_DISTANCE` (3.5 m, measured horizontally from the camera to
  the centre of the object's footprint) from the camera, 0 elsewhere. Ground and sky are
  never salient; distant objects are not salient.
* `normals` float32 (H, W, 3): the unit surface normal in the camera frame, oriented towards
  the camera (its dot product with the viewing ray is negative); (0, 0, 0) on sky.
* `depth` float32: the z coordinate in the camera frame of the hit point, in metres
  (roughly 1.5-30); 0 on sky (no label). The ground is valid up to its 30 m edge.
* `edge` uint8: 1 on pixels with a 4-neighbour that belongs to another instance (every
  shape and every figure is one instance; the ground and the sky are one instance each).
* `image` uint8 (H, W, 3) RGB.

Determinism
-----------
Image `index` of `split` depends only on (seed, split, index, image_size): its random stream
is `np.random.SeedSequence([seed, domain, split_code, index])` (domain 0 for the scenes, 1 for
the upstream set; split codes train 1, val 2, test 3), spawned into independent streams for
the camera, the scene and the sensor noise. The scene itself does not depend on the image
size, so one scene can be rendered at 64 and at 128 pixels. Rendering in a process pool gives
the same arrays as rendering serially.

Upstream classification set
---------------------------
`render_upstream` draws a separate distribution for pre-training a backbone: one object
roughly centred (position jitter of up to 15 % of the frame, 45-80 % of the half-frame in
radius, any yaw, up to 35 degrees of tilt and roll), no ground, over a background of smooth
random colour noise. Its textures are none of the scene textures: marble (turbulent
sinusoids), linear gradients, grid lines and hexagon lines. The label is the object's index
in `UPSTREAM_CLASSES`: the six scene shapes, the figure, and three extra shapes: a capsule,
an octahedron and a ring (a torus approximated by twelve capsules). Upstream images have no
cast shadows.

Caching
-------
`load_split` and `load_upstream` render on first use and keep the arrays as one
uncompressed .npz under `cache_dir()/synthetic/`, named by `RENDER_VERSION`, seed, split, size
and image size. A file is written to a temporary name and renamed into place, so a crash
never leaves a partial file; a file that cannot be read back is rendered again.
"""

from __future__ import annotations

import colorsys
import concurrent.futures
import math
import multiprocessing
import os
import pathlib
from functools import lru_cache

import numpy as np

from benchmark.atomic import atomic_write
from benchmark.data.layout import boundaries

RENDER_VERSION = 2

SPLIT_SIZES_DEFAULT = {"train": 1000, "val": 250}
TASK_ARRAYS = ("image", "semseg", "human_parts", "sal", "normals", "depth", "edge")

SHAPE_CLASSES = ("sphere", "box", "cylinder", "cone", "ellipsoid", "pyramid")
SEMSEG_CLASSES: tuple[str, ...] = ("background", "figure", *SHAPE_CLASSES)
NUM_SEMSEG_CLASSES = len(SEMSEG_CLASSES)
FIGURE_CLASS = 1
UPSTREAM_CLASSES: tuple[str, ...] = (*SHAPE_CLASSES, "figure", "capsule", "octahedron", "ring")

SALIENT_DISTANCE = 3.5  # metres, horizontal distance from the camera to the object's footprint
FLOOR_RADIUS = 30.0  # metres, horizontal radius of the ground disc around the camera
# Distances (metres, log-uniform) at which figures and shapes stand. Objects are near enough
# to span several cells of the decoders' finest map (stride 8, an 8x8 grid at 64 px), as
# PASCAL's objects do at 448 px; farther ones would be a few pixels wide.
FIGURE_DISTANCES = (2.2, 7.0)
SHAPE_DISTANCES = (1.8, 8.0)
IGNORE = 255

_SPLIT_CODES = {"train": 1, "val": 2, "test": 3}
_SCENE_DOMAIN, _UPSTREAM_DOMAIN = 0, 1

# Sub-pixel sample offsets (x, y) in pixels; the first is the pixel centre, which the labels use.
_SAMPLE_OFFSETS = np.array(
    [(0.0, 0.0), (0.125, -0.375), (0.375, 0.125), (-0.125, 0.375), (-0.375, -0.125)]
)
_NS = len(_SAMPLE_OFFSETS)
_EPS = 1e-4

# Primitive kinds.
_SPHERE, _ELLIPSOID, _POLY, _CYLINDER, _CONE, _CAPSULE = range(6)


# ----------------------------------------------------------------------------------------
# Small geometry helpers
# ----------------------------------------------------------------------------------------


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


_DOWN = np.array([0.0, 1.0, 0.0])  # the frames here have y pointing down, like the camera


class _Prim:
    """One convex primitive: kind, frame (centre `c`, rotation `R` local -> scene), shape
    parameters `p`, bounding sphere (`bc`, `br`) and what it belongs to."""

    __slots__ = ("kind", "c", "R", "p", "bc", "br", "inst", "cls", "part")

    def __init__(self, kind, c, R, p, br, bc=None):
        self.kind = kind
        self.c = np.asarray(c, dtype=float)
        self.R = np.eye(3) if R is None else R
        self.p = p
        self.br = float(br)
        self.bc = self.c.copy() if bc is None else np.asarray(bc, dtype=float)
        self.inst = 0
        self.cls = 0
        self.part = 0

    def moved(self, rot: np.ndarray, shift: np.ndarray) -> _Prim:
        """This primitive under the rigid motion x -> rot @ x + shift."""
        out = _Prim(self.kind, rot @ self.c + shift, rot @ self.R, self.p, self.br,
                    rot @ self.bc + shift)
        if self.kind == _CAPSULE:
            b, r = self.p
            out.p = (rot @ b + shift, r)
        out.inst, out.cls, out.part = self.inst, self.cls, self.part
        return out


def _sphere(r, c=(0.0, 0.0, 0.0)):
    return _Prim(_SPHERE, c, None, float(r), r)


def _ellipsoid(radii, R=None, c=(0.0, 0.0, 0.0)):
    radii = np.asarray(radii, dtype=float)
    return _Prim(_ELLIPSOID, c, R, radii, radii.max())


def _poly(normals, offsets, br, R=None):
    normals = np.asarray(normals, dtype=float)
    lengths = np.linalg.norm(normals, axis=1)
    return _Prim(_POLY, (0.0, 0.0, 0.0), R, (normals / lengths[:, None],
                                               np.asarray(offsets, dtype=float) / lengths), br)


def _box(hx, hy, hz):
    normals = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    return _poly(normals, [hx, hx, hy, hy, hz, hz], math.sqrt(hx * hx + hy * hy + hz * hz))


def _pyramid(a, hh):
    """Square base of half-width `a` at y = +hh, apex at y = -hh."""
    normals = [(0, 1, 0), (2 * hh, -a, 0), (-2 * hh, -a, 0), (0, -a, 2 * hh), (0, -a, -2 * hh)]
    offsets = [hh, a * hh, a * hh, a * hh, a * hh]
    return _poly(normals, offsets, math.sqrt(2 * a * a + hh * hh))


def _octahedron(ax, ay, az):
    normals, offsets = [], []
    for sx in (-1, 1):
        for sy in (-1, 1):
            for sz in (-1, 1):
                normals.append((sx / ax, sy / ay, sz / az))
                offsets.append(1.0)
    return _poly(normals, offsets, max(ax, ay, az))


def _cylinder(r, hh, R=None):
    """Axis along local y, |y| <= hh."""
    return _Prim(_CYLINDER, (0.0, 0.0, 0.0), R, (float(r), float(hh)), math.hypot(r, hh))


def _cone(r, hh):
    """Apex at local y = -hh (up), base disc of radius r at y = +hh."""
    return _Prim(_CONE, (0.0, 0.0, 0.0), None, (float(r), float(hh)), math.hypot(r, hh))


def _capsule(a, b, r):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    half = 0.5 * float(np.linalg.norm(b - a))
    return _Prim(_CAPSULE, a, None, (b, float(r)), half + r, bc=0.5 * (a + b))


# ----------------------------------------------------------------------------------------
# Ray - primitive intersection. Rays are given by components (ox, oy, oz, dx, dy, dz); each
# is a scalar or an array, broadcast together. The result is the parameter interval
# (t_near, t_far) of the ray inside the (convex) primitive; a miss has NaN or t_near > t_far.
# ----------------------------------------------------------------------------------------


def _to_local(pr, x, y, z):
    R = pr.R
    return (R[0, 0] * x + R[1, 0] * y + R[2, 0] * z,
            R[0, 1] * x + R[1, 1] * y + R[2, 1] * z,
            R[0, 2] * x + R[1, 2] * y + R[2, 2] * z)


def _from_local(pr, x, y, z):
    R = pr.R
    return (R[0, 0] * x + R[0, 1] * y + R[0, 2] * z,
            R[1, 0] * x + R[1, 1] * y + R[1, 2] * z,
            R[2, 0] * x + R[2, 1] * y + R[2, 2] * z)


def _iv_sphere(qx, qy, qz, dx, dy, dz, r):
    """Ray from q (relative to the centre) against a sphere of radius r."""
    a = dx * dx + dy * dy + dz * dz
    b = qx * dx + qy * dy + qz * dz
    c = qx * qx + qy * qy + qz * qz - r * r
    sq = np.sqrt(b * b - a * c)  # NaN on a miss
    return (-b - sq) / a, (-b + sq) / a


def _iv_slab(o, d, lo, hi):
    inv = 1.0 / d
    t1 = (lo - o) * inv
    t2 = (hi - o) * inv
    return np.minimum(t1, t2), np.maximum(t1, t2)


def _iv_poly(ox, oy, oz, dx, dy, dz, normals, offsets):
    near = far = None
    for (nx, ny, nz), off in zip(normals, offsets, strict=True):
        den = nx * dx + ny * dy + nz * dz
        t = (off - (nx * ox + ny * oy + nz * oz)) / den
        enter = den < 0
        tn = np.where(enter, t, -np.inf)
        tf = np.where(enter, np.inf, t)
        near = tn if near is None else np.maximum(near, tn)
        far = tf if far is None else np.minimum(far, tf)
    return near, far


def _iv_cylinder(ox, oy, oz, dx, dy, dz, r, hh):
    a = dx * dx + dz * dz
    b = ox * dx + oz * dz
    c = ox * ox + oz * oz - r * r
    sq = np.sqrt(b * b - a * c)
    s_near, s_far = _iv_slab(oy, dy, -hh, hh)
    return np.maximum((-b - sq) / a, s_near), np.minimum((-b + sq) / a, s_far)


def _iv_cone(ox, oy, oz, dx, dy, dz, r, hh):
    k2 = (r / (2.0 * hh)) ** 2
    wo = oy + hh  # distance below the apex
    A = dx * dx + dz * dz - k2 * dy * dy
    B = ox * dx + oz * dz - k2 * wo * dy
    C = ox * ox + oz * oz - k2 * wo * wo
    sq = np.sqrt(B * B - A * C)
    r1, r2 = (-B - sq) / A, (-B + sq) / A
    lo, hi = np.minimum(r1, r2), np.maximum(r1, r2)
    pos = A > 0
    down = dy > 0
    # A > 0: inside the double cone between the roots (check the nappe at the midpoint);
    # A < 0: inside outside the roots, one half-line per nappe; keep the lower nappe's.
    tn = np.where(pos, lo, np.where(down, hi, -np.inf))
    tf = np.where(pos, hi, np.where(down, np.inf, lo))
    tn = np.where(pos & (wo + dy * 0.5 * (lo + hi) < 0), np.nan, tn)
    s_near, s_far = _iv_slab(oy, dy, -hh, hh)
    return np.maximum(tn, s_near), np.minimum(tf, s_far)


def _iv_capsule(pr, ox, oy, oz, dx, dy, dz):
    a = pr.c
    b, r = pr.p
    axis = b - a
    length = float(np.linalg.norm(axis))
    ux, uy, uz = axis / length
    qx, qy, qz = ox - a[0], oy - a[1], oz - a[2]
    dd = dx * dx + dy * dy + dz * dz
    du = dx * ux + dy * uy + dz * uz
    qu = qx * ux + qy * uy + qz * uz
    qd = qx * dx + qy * dy + qz * dz
    qq = qx * qx + qy * qy + qz * qz
    A = dd - du * du
    B = qd - qu * du
    C = qq - qu * qu - r * r
    sq = np.sqrt(B * B - A * C)
    s_near, s_far = _iv_slab(qu, du, 0.0, length)
    cn = np.maximum((-B - sq) / A, s_near)
    cf = np.minimum((-B + sq) / A, s_far)
    ok = cn <= cf
    cn = np.where(ok, cn, np.nan)
    cf = np.where(ok, cf, np.nan)
    # The end spheres; their union with the side is an interval because a capsule is convex.
    sa = np.sqrt(qd * qd - dd * (qq - r * r))
    qbd = qd - length * du
    qbqb = qq - 2.0 * length * qu + length * length
    sb = np.sqrt(qbd * qbd - dd * (qbqb - r * r))
    near = np.fmin(np.fmin(cn, (-qd - sa) / dd), (-qbd - sb) / dd)
    far = np.fmax(np.fmax(cf, (-qd + sa) / dd), (-qbd + sb) / dd)
    return near, far


def _interval(pr, ox, oy, oz, dx, dy, dz):
    kind = pr.kind
    c = pr.c
    if kind == _SPHERE:
        return _iv_sphere(ox - c[0], oy - c[1], oz - c[2], dx, dy, dz, pr.p)
    if kind == _CAPSULE:
        return _iv_capsule(pr, ox, oy, oz, dx, dy, dz)
    lx, ly, lz = _to_local(pr, ox - c[0], oy - c[1], oz - c[2])
    ex, ey, ez = _to_local(pr, dx, dy, dz)
    if kind == _ELLIPSOID:
        rx, ry, rz = pr.p
        return _iv_sphere(lx / rx, ly / ry, lz / rz, ex / rx, ey / ry, ez / rz, 1.0)
    if kind == _POLY:
        return _iv_poly(lx, ly, lz, ex, ey, ez, *pr.p)
    if kind == _CYLINDER:
        return _iv_cylinder(lx, ly, lz, ex, ey, ez, *pr.p)
    return _iv_cone(lx, ly, lz, ex, ey, ez, *pr.p)


def _normal(pr, x, y, z):
    """Outward unit normal (scene frame) at surface points (x, y, z) of the primitive."""
    kind = pr.kind
    c = pr.c
    qx, qy, qz = x - c[0], y - c[1], z - c[2]
    if kind == _SPHERE:
        nx, ny, nz = qx, qy, qz
    elif kind == _CAPSULE:
        b, _ = pr.p
        axis = b - c
        length = float(np.linalg.norm(axis))
        u = axis / length
        s = np.clip(qx * u[0] + qy * u[1] + qz * u[2], 0.0, length)
        nx, ny, nz = qx - s * u[0], qy - s * u[1], qz - s * u[2]
    else:
        lx, ly, lz = _to_local(pr, qx, qy, qz)
        if kind == _ELLIPSOID:
            rx, ry, rz = pr.p
            lx, ly, lz = lx / (rx * rx), ly / (ry * ry), lz / (rz * rz)
        elif kind == _POLY:
            normals, offsets = pr.p
            dist = np.stack([n[0] * lx + n[1] * ly + n[2] * lz - o
                             for n, o in zip(normals, offsets, strict=True)])
            face = normals[np.argmax(dist, axis=0)]
            lx, ly, lz = face[:, 0], face[:, 1], face[:, 2]
        elif kind == _CYLINDER:
            r, hh = pr.p
            rho = np.sqrt(lx * lx + lz * lz)
            side = rho - r > np.abs(ly) - hh
            lx = np.where(side, lx, 0.0)
            lz = np.where(side, lz, 0.0)
            ly = np.where(side, 0.0, np.sign(ly))
        else:  # cone
            r, hh = pr.p
            k = r / (2.0 * hh)
            rho = np.maximum(np.sqrt(lx * lx + lz * lz), 1e-12)
            side = (rho - k * (ly + hh)) / math.sqrt(1.0 + k * k) > ly - hh
            lx = np.where(side, lx / rho, 0.0)
            lz = np.where(side, lz / rho, 0.0)
            ly = np.where(side, -k, 1.0)
        nx, ny, nz = _from_local(pr, lx, ly, lz)
    inv = 1.0 / np.maximum(np.sqrt(nx * nx + ny * ny + nz * nz), 1e-12)
    return nx * inv, ny * inv, nz * inv


# ----------------------------------------------------------------------------------------
# Textures: solid patterns returning a mix factor in [0, 1] between two colours.
# ----------------------------------------------------------------------------------------


def _waves(x, y, z, waves):
    total = 0.0
    for wx, wy, wz, phase, amp in waves:
        total = total + amp * np.sin(wx * x + wy * y + wz * z + phase)
    return total


def _random_waves(rng, count, freq):
    dirs = rng.normal(size=(count, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    scale = freq * rng.uniform(0.6, 1.6, size=count)
    amps = rng.uniform(0.5, 1.0, size=count)
    amps /= amps.sum()
    return [(*(dirs[i] * scale[i]), rng.uniform(0, 2 * math.pi), amps[i]) for i in range(count)]


def _unit(rng):
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _sample_pattern(rng, upstream: bool):
    """A texture as (name, params); the two families never share a pattern."""
    if upstream:
        name = ("marble", "gradient", "grid", "hex")[rng.integers(4)]
        if name == "marble":
            return name, {"dir": _unit(rng), "freq": rng.uniform(3.0, 9.0),
                          "turb": rng.uniform(1.5, 4.0), "waves": _random_waves(rng, 4, 6.0)}
        if name == "gradient":
            return name, {"dir": _unit(rng), "gain": rng.uniform(0.6, 1.4)}
        if name == "grid":
            return name, {"freq": rng.uniform(3.0, 7.0), "width": rng.uniform(0.08, 0.2)}
        e1 = _unit(rng)
        e2 = np.cross(e1, _unit(rng))
        e2 /= np.linalg.norm(e2)
        return name, {"e1": e1, "e2": e2, "freq": rng.uniform(3.0, 7.0),
                      "width": rng.uniform(0.06, 0.15)}
    name = ("checker", "stripes", "dots", "noise")[rng.integers(4)]
    if name == "checker":
        return name, {"freq": rng.uniform(2.5, 8.0)}
    if name == "stripes":
        return name, {"dir": _unit(rng), "freq": rng.uniform(2.0, 7.0),
                      "duty": rng.uniform(0.3, 0.7)}
    if name == "dots":
        return name, {"freq": rng.uniform(3.0, 8.0), "radius": rng.uniform(0.2, 0.4)}
    return name, {"waves": _random_waves(rng, 5, rng.uniform(3.0, 9.0)),
                  "gain": rng.uniform(1.5, 4.0)}


def _pattern(name, prm, x, y, z):
    if name == "plain":
        return np.zeros_like(x)
    if name == "checker":
        f = prm["freq"]
        return (np.floor(x * f) + np.floor(y * f) + np.floor(z * f)) % 2.0
    if name == "tiles":  # ground checker, in x and z only
        f = prm["freq"]
        return (np.floor(x * f) + np.floor(z * f)) % 2.0
    if name == "stripes":
        d = prm["dir"]
        s = (x * d[0] + y * d[1] + z * d[2]) * prm["freq"]
        return (s - np.floor(s) < prm["duty"]).astype(float)
    if name == "dots":
        f = prm["freq"]
        qx, qy, qz = x * f, y * f, z * f
        qx, qy, qz = qx - np.floor(qx) - 0.5, qy - np.floor(qy) - 0.5, qz - np.floor(qz) - 0.5
        return (qx * qx + qy * qy + qz * qz < prm["radius"] ** 2).astype(float)
    if name == "noise":
        return np.clip(0.5 + prm["gain"] * _waves(x, y, z, prm["waves"]), 0.0, 1.0)
    if name == "marble":
        d = prm["dir"]
        turb = 0.0
        for wx, wy, wz, phase, amp in prm["waves"]:
            turb = turb + amp * np.abs(np.sin(wx * x + wy * y + wz * z + phase))
        s = (x * d[0] + y * d[1] + z * d[2]) * prm["freq"] + prm["turb"] * turb * 3.0
        return 0.5 + 0.5 * np.sin(s)
    if name == "gradient":
        d = prm["dir"]
        return np.clip(0.5 + prm["gain"] * (x * d[0] + y * d[1] + z * d[2]), 0.0, 1.0)
    if name == "grid":
        f, w = prm["freq"], prm["width"]
        line = None
        for v in (x, y, z):
            q = v * f
            hit = np.abs(q - np.floor(q) - 0.5) > 0.5 - w
            line = hit if line is None else line | hit
        return line.astype(float)
    if name == "hex":
        e1, e2, f = prm["e1"], prm["e2"], prm["freq"]
        u = (x * e1[0] + y * e1[1] + z * e1[2]) * f
        v = (x * e2[0] + y * e2[1] + z * e2[2]) * f
        h = math.sqrt(3.0)
        # Distance to the nearest centre of two offset rectangular lattices: their Voronoi
        # cells are hexagons, whose borders are where both distances agree.
        du1, dv1 = u - np.round(u), v - h * np.round(v / h)
        u2, v2 = u - 0.5, v - 0.5 * h
        du2, dv2 = u2 - np.round(u2), v2 - h * np.round(v2 / h)
        d1 = np.sqrt(du1 * du1 + dv1 * dv1)
        d2 = np.sqrt(du2 * du2 + dv2 * dv2)
        return (np.abs(d1 - d2) < prm["width"]).astype(float)
    raise ValueError(name)


def _random_colour(rng, sat=(0.15, 0.95), val=(0.25, 1.0)):
    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*sat), rng.uniform(*val)))


def _colour_pair(rng):
    c1 = _random_colour(rng)
    if rng.uniform() < 0.6:
        c2 = _random_colour(rng)
    else:  # a darker or lighter shade of the same colour
        c2 = np.clip(c1 * rng.uniform(0.35, 1.6), 0.0, 1.0)
    return np.stack([c1, c2])


class _Material:
    """Appearance of one instance: a pattern in the instance frame, two colours (or one pair
    per figure part), specular strength and exponent."""

    __slots__ = ("pattern", "prm", "colours", "frame_c", "frame_R", "ks", "shininess")

    def __init__(self, rng, pattern, prm, colours, frame_c, frame_R):
        self.pattern, self.prm, self.colours = pattern, prm, colours
        self.frame_c, self.frame_R = frame_c, frame_R
        self.ks = rng.uniform(0.0, 0.35)
        self.shininess = rng.uniform(8.0, 64.0)


# ----------------------------------------------------------------------------------------
# Objects
# ----------------------------------------------------------------------------------------


def _make_shape(rng, name):
    """A shape centred at the origin (y down) and the depth of its lowest point below the
    centre."""
    if name == "sphere":
        r = rng.uniform(0.3, 0.75)
        return [_sphere(r)], r
    if name == "box":
        hx, hy, hz = rng.uniform(0.25, 0.7), rng.uniform(0.2, 0.7), rng.uniform(0.25, 0.7)
        return [_box(hx, hy, hz)], hy
    if name == "cylinder":
        r, hh = rng.uniform(0.2, 0.5), rng.uniform(0.25, 0.9)
        if rng.uniform() < 0.3:  # lying on its side
            return [_cylinder(r, hh, R=_rot_z(math.pi / 2))], r
        return [_cylinder(r, hh)], hh
    if name == "cone":
        r, hh = rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.9)
        return [_cone(r, hh)], hh
    if name == "ellipsoid":
        radii = rng.uniform(0.25, 0.5, size=3)
        radii[rng.integers(3)] *= rng.uniform(1.6, 2.5)
        return [_ellipsoid(radii)], radii[1]
    if name == "pyramid":
        a, hh = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.8)
        return [_pyramid(a, hh)], hh
    if name == "capsule":
        length, r = rng.uniform(0.6, 1.6), rng.uniform(0.18, 0.4)
        return [_capsule((0, -length / 2, 0), (0, length / 2, 0), r)], length / 2 + r
    if name == "octahedron":
        ax, ay, az = rng.uniform(0.4, 0.8), rng.uniform(0.5, 1.0), rng.uniform(0.4, 0.8)
        return [_octahedron(ax, ay, az)], ay
    if name == "ring":
        big, tube, n = rng.uniform(0.45, 0.8), rng.uniform(0.1, 0.2), 12
        angles = 2 * math.pi * np.arange(n + 1) / n
        pts = [np.array([big * math.cos(a), 0.0, big * math.sin(a)]) for a in angles]
        rot = _rot_x(math.pi / 2)  # stand the ring up
        return [_capsule(rot @ pts[i], rot @ pts[i + 1], tube) for i in range(n)], big + tube
    raise ValueError(name)


def _make_figure(rng, height):
    """An articulated figure in its own frame (y down, facing +z, feet on y = 0): its
    primitives, with their part ids set."""
    H = height
    lean = _rot_z(rng.normal(0.0, 0.06)) @ _rot_x(-rng.uniform(-0.15, 0.4))
    twist = _rot_y(rng.normal(0.0, 0.2))
    upper = lean @ twist

    def body(v):
        return upper @ (np.asarray(v, dtype=float) * H)

    parts = []
    head = _sphere(0.085 * H, body((0.0, -0.40, 0.0)))
    head.part = 1
    torso = _ellipsoid(np.array([0.135, 0.19, 0.085]) * H, R=upper, c=body((0.0, -0.15, 0.0)))
    torso.part = 2
    parts += [head, torso]
    arm_r, leg_r = 0.048 * H, 0.062 * H
    for s in (-1.0, 1.0):
        shoulder = body((s * 0.15, -0.285, 0.0))
        frame = upper @ _rot_x(rng.uniform(-0.9, 2.8)) @ _rot_z(-s * rng.uniform(0.1, 1.6))
        elbow = shoulder + 0.175 * H * (frame @ _DOWN)
        hand = elbow + 0.175 * H * (frame @ _rot_x(rng.uniform(0.0, 2.2)) @ _DOWN)
        up_arm, low_arm = _capsule(shoulder, elbow, arm_r), _capsule(elbow, hand, arm_r * 0.9)
        up_arm.part, low_arm.part = 3, 4
        hip = np.array([s * 0.075 * H, 0.0, 0.0])
        frame = _rot_x(rng.uniform(-0.5, 1.1)) @ _rot_z(-s * rng.uniform(0.0, 0.35))
        knee = hip + 0.25 * H * (frame @ _DOWN)
        foot = knee + 0.25 * H * (frame @ _rot_x(-rng.uniform(0.0, 1.7)) @ _DOWN)
        up_leg, low_leg = _capsule(hip, knee, leg_r), _capsule(knee, foot, leg_r * 0.9)
        up_leg.part, low_leg.part = 5, 6
        parts += [up_arm, low_arm, up_leg, low_leg]
    lowest = max(_lowest(p) for p in parts)
    shift = np.array([0.0, -lowest, 0.0])
    return [p.moved(np.eye(3), shift) for p in parts]


def _lowest(pr):
    """Largest y (the lowest point, y down) of a primitive."""
    if pr.kind == _CAPSULE:
        b, r = pr.p
        return max(pr.c[1], b[1]) + r
    if pr.kind == _ELLIPSOID:
        # extent along y of a rotated ellipsoid: |row y of R * radii|
        return pr.c[1] + float(np.linalg.norm(pr.R[1] * pr.p))
    return pr.c[1] + pr.br


def _bounding_sphere(prims):
    lo = np.min([p.bc - p.br for p in prims], axis=0)
    hi = np.max([p.bc + p.br for p in prims], axis=0)
    centre = 0.5 * (lo + hi)
    radius = max(float(np.linalg.norm(p.bc - centre)) + p.br for p in prims)
    return centre, radius


def _figure_material(rng, frame_c, frame_R):
    name, prm = _sample_pattern(rng, upstream=False)
    if rng.uniform() < 0.35:
        name = "plain"
    skin = _random_colour(rng)
    shirt, trousers = _colour_pair(rng), _colour_pair(rng)
    if name == "plain":  # plain clothes: keep one colour per group
        shirt, trousers = shirt[[0, 0]], trousers[[0, 0]]
    skin = np.stack([skin, skin * 0.85])
    sleeves = shirt if rng.uniform() < 0.5 else skin
    shoes = trousers if rng.uniform() < 0.7 else np.stack([_random_colour(rng)] * 2)
    colours = np.stack([skin, skin, shirt, shirt, sleeves, trousers, shoes])  # index = part
    return _Material(rng, name, prm, colours, frame_c, frame_R)


# ----------------------------------------------------------------------------------------
# Cameras and rays
# ----------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _pixel_grid(n: int):
    """Pixel coordinates relative to the principal point, (samples, n, n), for x and y."""
    centres = np.arange(n, dtype=float) + 0.5 - n / 2.0
    px = centres[None, None, :] + _SAMPLE_OFFSETS[:, 0, None, None]
    py = centres[None, :, None] + _SAMPLE_OFFSETS[:, 1, None, None]
    px = np.broadcast_to(px, (_NS, n, n)).copy()
    py = np.broadcast_to(py, (_NS, n, n)).copy()
    px.setflags(write=False)
    py.setflags(write=False)
    return px, py


class _Camera:
    """Pinhole at the origin; the scene frame is the camera frame pitched up by `pitch`
    (level: x right, y down, z forward horizontal)."""

    def __init__(self, n: int, fov_deg: float, pitch: float, height: float):
        self.n = n
        self.f = (n / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
        self.pitch, self.height = pitch, height
        self.cp, self.sp = math.cos(pitch), math.sin(pitch)

    def intrinsics(self) -> np.ndarray:
        c = self.n / 2.0
        return np.array([[self.f, 0.0, c], [0.0, self.f, c], [0.0, 0.0, 1.0]])

    def rays(self):
        """Scene-frame ray directions (x_c, y_c, 1) rotated: the ray parameter is the depth."""
        px, py = _pixel_grid(self.n)
        xc, yc = px / self.f, py / self.f
        return xc, self.cp * yc + self.sp, self.cp - self.sp * yc

    def to_camera(self, x, y, z):
        return x, self.cp * y - self.sp * z, self.sp * y + self.cp * z

    def screen_box(self, centre, radius):
        """Pixel rows/columns that rays through a sphere can reach (a conservative box)."""
        n = self.n
        x, y, z = self.to_camera(*centre)
        if z - radius < 0.05:
            return 0, n, 0, n
        xs = [(x + a) / (z + b) for a in (-radius, radius) for b in (-radius, radius)]
        ys = [(y + a) / (z + b) for a in (-radius, radius) for b in (-radius, radius)]
        h = n / 2.0 - 0.5
        u0 = max(0, math.floor(self.f * min(xs) + h - 0.5))
        u1 = min(n, math.ceil(self.f * max(xs) + h + 0.5) + 1)
        v0 = max(0, math.floor(self.f * min(ys) + h - 0.5))
        v1 = min(n, math.ceil(self.f * max(ys) + h + 0.5) + 1)
        return v0, v1, u0, u1


def _camera_from(ss: np.random.SeedSequence, n: int) -> _Camera:
    rng = np.random.default_rng(ss)
    fov = rng.uniform(50.0, 65.0)
    pitch = math.radians(rng.uniform(10.0, 20.0))
    height = rng.uniform(1.2, 2.0)
    return _Camera(n, fov, pitch, height)


def _streams(domain: int, seed: int, split: str, index: int):
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(_SPLIT_CODES)}")
    if index < 0 or seed < 0:
        raise ValueError("seed and index must be non-negative")
    return np.random.SeedSequence([seed, domain, _SPLIT_CODES[split], index]).spawn(3)


def camera_intrinsics(seed: int, split: str, index: int, image_size: int) -> np.ndarray:
    """The 3x3 intrinsic matrix of scene `index` (pixel (u, v) has its centre at u + 0.5)."""
    cam_ss, _, _ = _streams(_SCENE_DOMAIN, seed, split, index)
    return _camera_from(cam_ss, image_size).intrinsics()


# ----------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------


class _Scene:
    def __init__(self):
        self.prims: list[_Prim] = []
        self.materials: list[_Material | None] = [None, None]  # sky, ground
        self.salient: list[bool] = [False, False]
        self.classes: list[int] = [0, 0]
        self.light = np.zeros(3)
        self.light_colour = np.ones(3)
        self.ambient = np.ones(3)
        self.ground = None  # (pattern, params, colours)
        self.sky = None  # (horizon, zenith)
        self.fog = np.inf
        self.noise = 0.0

    def add(self, prims, cls, material, salient):
        inst = len(self.materials)
        for p in prims:
            p.inst, p.cls = inst, cls
        self.prims += prims
        self.materials.append(material)
        self.salient.append(bool(salient))
        self.classes.append(cls)


def _place(rng, cam, taken, radius, dist_range, tries=30):
    """A ground position (x, z) inside the horizontal field of view whose footprint circle
    keeps clear of the ones taken, or None."""
    half = math.atan(cam.n / 2.0 / cam.f) * 1.05
    lo, hi = math.log(dist_range[0]), math.log(dist_range[1])
    for _ in range(tries):
        d = math.exp(rng.uniform(lo, hi))
        phi = rng.uniform(-half, half)
        x, z = d * math.sin(phi), d * math.cos(phi)
        if all((x - tx) ** 2 + (z - tz) ** 2 > (radius + tr + 0.1) ** 2 for tx, tz, tr in taken):
            taken.append((x, z, radius))
            return x, z, d
    return None


def _sample_scene(rng, cam) -> _Scene:
    sc = _Scene()
    el, az = math.radians(rng.uniform(20.0, 70.0)), rng.uniform(0.0, 2 * math.pi)
    sc.light = np.array([math.cos(el) * math.sin(az), -math.sin(el), math.cos(el) * math.cos(az)])
    sc.light_colour = rng.uniform(0.85, 1.15, size=3) * rng.uniform(0.9, 1.3)
    if rng.uniform() < 0.7:
        horizon = np.array(colorsys.hsv_to_rgb(rng.uniform(0.5, 0.68), rng.uniform(0.05, 0.4),
                                               rng.uniform(0.75, 1.0)))
    else:
        horizon = _random_colour(rng, sat=(0.05, 0.5), val=(0.6, 1.0))
    zenith = np.clip(horizon * rng.uniform(0.4, 0.9, size=3), 0.0, 1.0)
    sc.sky = (horizon, zenith)
    sc.ambient = rng.uniform(0.2, 0.4) * (0.5 + 0.5 * horizon)
    sc.fog = rng.uniform(30.0, 90.0)
    ground_pattern = ("tiles", "stripes", "noise", "plain")[rng.integers(4)]
    if ground_pattern == "tiles":
        gprm = {"freq": 1.0 / rng.uniform(0.5, 2.0)}
    elif ground_pattern == "stripes":
        gprm = {"dir": np.array([math.cos(a := rng.uniform(0, math.pi)), 0.0, math.sin(a)]),
                "freq": 1.0 / rng.uniform(0.6, 2.5), "duty": rng.uniform(0.3, 0.7)}
    elif ground_pattern == "noise":
        gprm = {"waves": _random_waves(rng, 5, rng.uniform(0.5, 2.0)),
                "gain": rng.uniform(1.0, 3.0)}
    else:
        gprm = {}
    g1 = _random_colour(rng, sat=(0.0, 0.45), val=(0.3, 0.75))
    g2 = np.clip(g1 * rng.uniform(0.5, 1.4, size=3), 0.0, 1.0)
    sc.ground = (ground_pattern, gprm, np.stack([g1, g2]))
    sc.noise = rng.uniform(0.004, 0.02)

    taken: list[tuple[float, float, float]] = []
    n_fig = rng.choice(4, p=[0.37, 0.43, 0.15, 0.05])
    floor_y = cam.height
    for _ in range(n_fig):
        height = rng.uniform(1.5, 2.0)
        parts = _make_figure(rng, height)
        spot = _place(rng, cam, taken, 0.35 * height, FIGURE_DISTANCES)
        if spot is None:
            continue
        x, z, d = spot
        rot = _rot_y(rng.uniform(0, 2 * math.pi))
        shift = np.array([x, floor_y, z])
        parts = [p.moved(rot, shift) for p in parts]
        pelvis = next(p for p in parts if p.part == 2).c
        material = _figure_material(rng, pelvis, rot)
        sc.add(parts, FIGURE_CLASS, material, d < SALIENT_DISTANCE)
    for _ in range(rng.integers(3, 7)):
        cls = int(rng.integers(len(SHAPE_CLASSES)))
        prims, bottom = _make_shape(rng, SHAPE_CLASSES[cls])
        footprint = max(p.br for p in prims)
        spot = _place(rng, cam, taken, footprint, SHAPE_DISTANCES)
        if spot is None:
            continue
        x, z, d = spot
        lift = rng.uniform(0.1, 0.6) if rng.uniform() < 0.25 else 0.0
        rot = _rot_y(rng.uniform(0, 2 * math.pi))
        shift = np.array([x, floor_y - lift - bottom, z])
        prims = [p.moved(rot, shift) for p in prims]
        pattern, prm = _sample_pattern(rng, upstream=False)
        material = _Material(rng, pattern, prm, _colour_pair(rng), shift, rot)
        sc.add(prims, 2 + cls, material, d < SALIENT_DISTANCE)
    return sc


# ----------------------------------------------------------------------------------------
# The renderer
# ----------------------------------------------------------------------------------------


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


def render_scene(seed: int, split: str, index: int, image_size: int) -> dict[str, np.ndarray]:
    """One image and all its labels (see the module docstring for the definitions)."""
    cam_ss, scene_ss, noise_ss = _streams(_SCENE_DOMAIN, seed, split, index)
    n = int(image_size)
    cam = _camera_from(cam_ss, n)
    sc = _sample_scene(np.random.default_rng(scene_ss), cam)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        samples, t, pid, hit, normals = _render(sc, cam, ground=True, shadows=True)
    image = _finish_image(samples, sc.noise, np.random.default_rng(noise_ss))

    # Labels from the centre samples (the first n*n entries).
    centre = hit < n * n
    hc = hit[centre]
    pid_c = pid[: n * n]
    lookup = np.array([0, 0] + [p.inst for p in sc.prims], dtype=np.int32)  # pid + 2
    inst = lookup[pid_c + 2].reshape(n, n)  # 0 sky, 1 ground, 2.. objects
    inst[pid_c.reshape(n, n) == -1] = 0  # sky
    inst[pid_c.reshape(n, n) == -2] = 1  # ground
    classes = np.asarray(sc.classes, dtype=np.uint8)
    semseg = classes[inst]
    parts = np.array([0, 0] + [p.part for p in sc.prims], dtype=np.uint8)[pid_c + 2].reshape(n, n)
    if (semseg == FIGURE_CLASS).any():
        human = np.where(semseg == FIGURE_CLASS, parts, 0).astype(np.uint8)
    else:
        human = np.full((n, n), IGNORE, dtype=np.uint8)
    sal = np.asarray(sc.salient, dtype=np.uint8)[inst]

    depth = np.zeros(n * n)
    depth[hc] = t[hc]
    nrm = np.zeros((n * n, 3))
    nrm[hc] = np.stack(cam.to_camera(*normals[centre].T), axis=1)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)

    return {
        "image": image,
        "semseg": semseg,
        "human_parts": human,
        "sal": sal,
        "normals": nrm.reshape(n, n, 3).astype(np.float32),
        "depth": depth.reshape(n, n).astype(np.float32),
        "edge": boundaries(inst),
    }


# ----------------------------------------------------------------------------------------
# The upstream classification set
# ----------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _interp_matrix(cells: int, n: int) -> np.ndarray:
    """(n, cells) weights that smoothly interpolate `cells` control values over n pixels."""
    pos = (np.arange(n) + 0.5) / n * (cells - 1)
    i0 = np.clip(np.floor(pos).astype(int), 0, cells - 2)
    f = pos - i0
    f = f * f * (3.0 - 2.0 * f)
    w = np.zeros((n, cells))
    w[np.arange(n), i0] = 1.0 - f
    w[np.arange(n), i0 + 1] = f
    return w


def _noise_background(rng, n: int) -> np.ndarray:
    base = np.zeros((n, n, 3))
    for cells, amp in ((int(rng.integers(2, 5)), 1.0), (int(rng.integers(4, 8)), 0.25)):
        grid = np.stack([_random_colour(rng, sat=(0.0, 0.9), val=(0.15, 1.0))
                         for _ in range(cells * cells)]).reshape(cells, cells, 3)
        w = _interp_matrix(cells, n)
        layer = np.einsum("ia,abc,jb->ijc", w, grid, w)
        base = base + amp * (layer - (0.5 if amp < 1 else 0.0))
    return np.clip(base, 0.0, 1.0)


def render_upstream_image(seed: int, split: str, index: int, image_size: int):
    """One upstream image (H, W, 3) uint8 and its class index."""
    _, scene_ss, noise_ss = _streams(_UPSTREAM_DOMAIN, seed, split, index)
    rng = np.random.default_rng(scene_ss)
    n = int(image_size)
    label = int(rng.integers(len(UPSTREAM_CLASSES)))
    name = UPSTREAM_CLASSES[label]
    if name == "figure":
        prims = _make_figure(rng, rng.uniform(1.5, 2.0))
        frame_c = next(p for p in prims if p.part == 2).c.copy()
    else:
        prims, _ = _make_shape(rng, name)
        frame_c = np.zeros(3)
    centre, radius = _bounding_sphere(prims)
    if name == "figure":
        radius *= 0.85  # the bounding sphere of a figure is loose
    fov = rng.uniform(40.0, 60.0)
    cam = _Camera(n, fov, 0.0, 0.0)
    fill = rng.uniform(0.45, 0.8)  # projected radius / half-frame
    dist = radius * cam.f / (fill * n / 2.0)
    jitter = rng.uniform(-0.15, 0.15, size=2) * dist * (n / 2.0) / cam.f
    rot = (_rot_z(rng.uniform(-0.6, 0.6)) @ _rot_x(rng.uniform(-0.6, 0.6))
           @ _rot_y(rng.uniform(0, 2 * math.pi)))
    target = np.array([jitter[0], jitter[1], dist])
    prims = [p.moved(rot, target - rot @ centre) for p in prims]
    frame_c = rot @ (frame_c - centre) + target

    sc = _Scene()
    light = _unit(rng)
    light[2] = -abs(light[2]) - 0.3  # from the camera's side
    sc.light = light / np.linalg.norm(light)
    sc.light_colour = rng.uniform(0.85, 1.15, size=3) * rng.uniform(0.9, 1.2)
    sc.ambient = np.full(3, rng.uniform(0.2, 0.4))
    name_t, prm = _sample_pattern(rng, upstream=True)
    scale = 1.0 / radius  # textures relative to the object size
    prm = dict(prm)
    for key in ("freq", "gain"):
        if key in prm:
            prm[key] = prm[key] * scale
    if name_t == "marble":
        prm["waves"] = [(wx * scale, wy * scale, wz * scale, ph, a)
                        for wx, wy, wz, ph, a in prm["waves"]]
    material = _Material(rng, name_t, prm, _colour_pair(rng), frame_c, rot)
    sc.add(prims, label, material, False)
    background = _noise_background(rng, n)
    noise = rng.uniform(0.004, 0.02)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        samples, *_ = _render(sc, cam, ground=False, shadows=False, background=background)
    return _finish_image(samples, noise, np.random.default_rng(noise_ss)), label


# ----------------------------------------------------------------------------------------
# Splits, processes and the cache
# ----------------------------------------------------------------------------------------


def _render_chunk(kind: str, seed: int, split: str, start: int, stop: int, image_size: int):
    if kind == "upstream":
        images, labels = [], []
        for i in range(start, stop):
            img, lab = render_upstream_image(seed, split, i, image_size)
            images.append(img)
            labels.append(lab)
        return {"image": np.stack(images), "label": np.asarray(labels, dtype=np.int64)}
    out: dict[str, list[np.ndarray]] = {k: [] for k in TASK_ARRAYS}
    for i in range(start, stop):
        scene = render_scene(seed, split, i, image_size)
        for k in TASK_ARRAYS:
            out[k].append(scene[k])
    stacked = {k: np.stack(v) for k, v in out.items()}
    stacked["normals"] = stacked["normals"].astype(np.float16)
    return stacked


def _empty(kind: str, n: int) -> dict[str, np.ndarray]:
    if kind == "upstream":
        return {"image": np.zeros((0, n, n, 3), np.uint8), "label": np.zeros(0, np.int64)}
    return {
        "image": np.zeros((0, n, n, 3), np.uint8),
        "semseg": np.zeros((0, n, n), np.uint8),
        "human_parts": np.zeros((0, n, n), np.uint8),
        "sal": np.zeros((0, n, n), np.uint8),
        "normals": np.zeros((0, n, n, 3), np.float16),
        "depth": np.zeros((0, n, n), np.float32),
        "edge": np.zeros((0, n, n), np.uint8),
    }


def pool_context():
    """The multiprocessing context of the worker pools that render scenes or decode real
    data: workers only run numpy (and PIL and scipy), so forking, where the platform offers
    it, spares re-importing the parent's modules in each one."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def _render_many(kind, seed, split, size, image_size, progress, workers):
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(_SPLIT_CODES)}")
    size, image_size = int(size), int(image_size)
    if size <= 0:
        return _empty(kind, image_size)
    if workers is None:
        workers = os.cpu_count() or 1
    chunk = max(1, min(64, -(-size // (4 * max(1, workers)))))
    bounds = [(s, min(size, s + chunk)) for s in range(0, size, chunk)]
    workers = min(workers, len(bounds))
    from tqdm import tqdm

    label = "upstream " if kind == "upstream" else ""
    bar = tqdm(total=size, desc=f"rendering synthetic {label}{split}", disable=not progress,
               unit="img", leave=False)
    parts = []
    try:
        if workers <= 1 or size < 16:
            for s, e in bounds:
                parts.append(_render_chunk(kind, seed, split, s, e, image_size))
                bar.update(e - s)
        else:
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=pool_context()) as ex:
                futures = [ex.submit(_render_chunk, kind, seed, split, s, e, image_size)
                           for s, e in bounds]
                for (s, e), fut in zip(bounds, futures, strict=True):
                    parts.append(fut.result())
                    bar.update(e - s)
    finally:
        bar.close()
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def render_split(seed: int, split: str, size: int, image_size: int, progress: bool = True,
                 workers: int | None = None) -> dict[str, np.ndarray]:
    """`size` scenes stacked: image (N, H, W, 3) uint8; semseg, human_parts, sal, edge
    (N, H, W) uint8; normals (N, H, W, 3) float16; depth (N, H, W) float32. `workers`
    processes render chunks in parallel (default: one per CPU; 1 renders serially); the
    arrays do not depend on it."""
    return _render_many("scene", seed, split, size, image_size, progress, workers)


def render_upstream(seed: int, split: str, size: int, image_size: int, progress: bool = True,
                    workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W, 3) uint8, labels (N,) int64) of the upstream classification set."""
    out = _render_many("upstream", seed, split, size, image_size, progress, workers)
    return out["image"], out["label"]


def cache_dir() -> pathlib.Path:
    """$MTPEFT_CACHE if set, else $XDG_CACHE_HOME/mtpeft, else ~/.cache/mtpeft."""
    env = os.environ.get("MTPEFT_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
    return base / "mtpeft"


def _cache_path(root, kind, seed, split, size, image_size) -> pathlib.Path:
    base = pathlib.Path(root).expanduser() if root is not None else cache_dir()
    name = f"{kind}-v{RENDER_VERSION}-seed{seed}-{split}-n{size}-px{image_size}.npz"
    return base / "synthetic" / name


def _read_cache(path: pathlib.Path, expected: dict[str, np.ndarray]):
    """The cached arrays, or None if the file is missing or does not match `expected`
    (empty arrays of the right dtypes and trailing shapes) in size."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if set(data.files) != set(expected):
                return None
            arrays = {k: data[k] for k in expected}
    except Exception:  # unreadable in any way: render again
        return None
    for k, ref in expected.items():
        a = arrays[k]
        if a.dtype != ref.dtype or a.shape[1:] != ref.shape[1:]:
            return None
    return arrays


def _write_cache(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda fh: np.savez(fh, **arrays), prefix=path.name + ".")


def _load(kind, seed, split, size, image_size, root, progress):
    size, image_size = int(size), int(image_size)
    path = _cache_path(root, kind, seed, split, size, image_size)
    expected = _empty(kind, image_size)
    arrays = _read_cache(path, expected)
    if arrays is not None and all(len(a) == size for a in arrays.values()):
        return arrays
    arrays = _render_many(kind, seed, split, size, image_size, progress, None)
    _write_cache(path, arrays)
    return arrays


def load_split(seed: int, split: str, size: int, image_size: int,
               root: pathlib.Path | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    """`render_split`, cached under (root or cache_dir())/synthetic/ and read back later."""
    return _load("scene", seed, split, size, image_size, root, progress)


def load_upstream(seed: int, split: str, size: int, image_size: int,
                  root: pathlib.Path | None = None,
                  progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """`render_upstream`, cached like `load_split`."""
    out = _load("upstream", seed, split, size, image_size, root, progress)
    return out["image"], out["label"]
