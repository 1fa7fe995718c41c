"""Geometry: rotations, the convex primitives scenes are made of, ray - primitive
intersection and surface normals."""

from __future__ import annotations

import math

import numpy as np

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
