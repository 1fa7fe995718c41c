"""The upstream classification set: one object over a noise background, for pre-training
a backbone (see "Upstream classification set" in the package docstring)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from benchmark.data.synthetic.camera import _Camera, _streams
from benchmark.data.synthetic.constants import _UPSTREAM_DOMAIN, UPSTREAM_CLASSES
from benchmark.data.synthetic.geometry import _rot_x, _rot_y, _rot_z
from benchmark.data.synthetic.objects import _bounding_sphere, _make_figure, _make_shape
from benchmark.data.synthetic.render import _finish_image, _render
from benchmark.data.synthetic.sampling import _Scene
from benchmark.data.synthetic.textures import (
    _colour_pair,
    _Material,
    _random_colour,
    _sample_pattern,
    _unit,
)


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
