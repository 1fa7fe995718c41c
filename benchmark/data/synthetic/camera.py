"""Cameras and rays: the pinhole camera of a scene, its rays through the anti-aliasing
samples of every pixel, and the random streams of one image (see "Determinism" in the
package docstring)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from benchmark.data.synthetic.constants import _SCENE_DOMAIN, _SPLIT_CODES

# Sub-pixel sample offsets (x, y) in pixels; the first is the pixel centre, which the labels use.
_SAMPLE_OFFSETS = np.array(
    [(0.0, 0.0), (0.125, -0.375), (0.375, 0.125), (-0.125, 0.375), (-0.375, -0.125)]
)
_NS = len(_SAMPLE_OFFSETS)


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
