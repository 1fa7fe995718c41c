"""Scenes: the random lighting, sky, ground, figures and shapes of one scene, placed on the
ground inside the camera's view."""

from __future__ import annotations

import colorsys
import math

import numpy as np

from benchmark.data.synthetic.constants import (
    CLASS_HUE_SHARE,
    CLASS_HUE_SPREAD,
    FIGURE_CLASS,
    FIGURE_DISTANCES,
    LIMB_SCALE,
    SALIENT_DISTANCE,
    SHAPE_CLASSES,
    SHAPE_DISTANCES,
)
from benchmark.data.synthetic.geometry import _Prim, _rot_y
from benchmark.data.synthetic.objects import _figure_material, _make_figure, _make_shape
from benchmark.data.synthetic.textures import (
    _class_colour_pair,
    _colour_pair,
    _Material,
    _random_colour,
    _random_waves,
    _sample_pattern,
)


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
        parts = _make_figure(rng, height, LIMB_SCALE)
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
        if rng.uniform() < CLASS_HUE_SHARE:
            colours = _class_colour_pair(rng, cls, len(SHAPE_CLASSES), CLASS_HUE_SPREAD)
        else:
            colours = _colour_pair(rng)
        material = _Material(rng, pattern, prm, colours, shift, rot)
        sc.add(prims, 2 + cls, material, d < SALIENT_DISTANCE)
    return sc
