"""Objects: the shapes of the scene and upstream classes, the articulated figures and their
materials."""

from __future__ import annotations

import math

import numpy as np

from benchmark.data.synthetic.geometry import (
    _CAPSULE,
    _DOWN,
    _ELLIPSOID,
    _box,
    _capsule,
    _cone,
    _cylinder,
    _ellipsoid,
    _octahedron,
    _pyramid,
    _rot_x,
    _rot_y,
    _rot_z,
    _sphere,
)
from benchmark.data.synthetic.textures import (
    _colour_pair,
    _Material,
    _random_colour,
    _sample_pattern,
)


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


def _make_figure(rng, height, limb_scale=1.0):
    """An articulated figure in its own frame (y down, facing +z, feet on y = 0): its
    primitives, with their part ids set; `limb_scale` thickens the arms and legs."""
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
    arm_r, leg_r = 0.048 * H * limb_scale, 0.062 * H * limb_scale
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
