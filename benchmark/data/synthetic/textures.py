"""Textures: solid patterns returning a mix factor in [0, 1] between two colours, random
colours, and the material of an instance."""

from __future__ import annotations

import colorsys
import math

import numpy as np


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


def _class_colour_pair(rng, k: int, n: int, spread: float):
    """Two colours in class k's hue band (hue k/n +- spread): a bright one and its shade."""
    hue = (k / n + rng.uniform(-spread, spread)) % 1.0
    c1 = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 0.95), rng.uniform(0.5, 1.0)))
    return np.stack([c1, np.clip(c1 * rng.uniform(0.5, 0.9), 0.0, 1.0)])


class _Material:
    """Appearance of one instance: a pattern in the instance frame, two colours (or one pair
    per figure part), specular strength and exponent."""

    __slots__ = ("pattern", "prm", "colours", "frame_c", "frame_R", "ks", "shininess")

    def __init__(self, rng, pattern, prm, colours, frame_c, frame_R):
        self.pattern, self.prm, self.colours = pattern, prm, colours
        self.frame_c, self.frame_R = frame_c, frame_R
        self.ks = rng.uniform(0.0, 0.35)
        self.shininess = rng.uniform(8.0, 64.0)
