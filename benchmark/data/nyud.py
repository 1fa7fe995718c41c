"""NYUD-v2 multi-task in the layout of the MTI-Net / ASTMT release (protocol §1.2).

Under the root (`NYUD_MT.tgz`):

    images/<id>.jpg               795 train / 654 val RGB images
    gt_sets/{train,val}.txt       the ids of each split
    segmentation/<id>.png         0 unlabelled, 1..40 the classes
    depth/<id>.npy                metres, 0 where unknown
    normals/<id>.npy              (H, W, 3) unit vectors
    edge/<id>.npy                 (H, W) 0/1 boundaries (only for the optional edge task)

Labels: `semseg` shifts the classes down by one (0..39) and marks 0 as 255 (ignored);
`depth` is valid where > 0 (NaN counts as unknown); `normals` are kept as float16 and a
zero vector means no label; `edge` is 1 where the array is at least 0.5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.data.layout import (
    ARRAYS,
    ArraySpec,
    DataError,
    Layout,
    Sample,
    read_npy,
    read_png_grey,
)

NUM_CLASSES = 40


class NyudSample(Sample):
    layout: NyudLayout

    def _sources_semseg(self) -> list[Path]:
        return [self._path("segmentation", ".png")]

    def _semseg(self) -> np.ndarray:
        path = self._path("segmentation", ".png")
        raw = self.check_size(read_png_grey(path), path)
        if raw.max() > NUM_CLASSES:
            raise DataError(path, f"class id {int(raw.max())} outside 0..{NUM_CLASSES}")
        return np.where(raw == 0, 255, raw - 1).astype(np.uint8)

    def _float_map(self, folder: str, channels: int) -> np.ndarray:
        path = self._path(folder, ".npy")
        values = read_npy(path)
        if channels == 0 and values.ndim == 3 and values.shape[-1] == 1:
            values = values[..., 0]
        expected = 2 if channels == 0 else 3
        if values.ndim != expected or (channels and values.shape[-1] != channels):
            raise DataError(path, f"unexpected array shape {values.shape}")
        if not np.issubdtype(values.dtype, np.number):
            raise DataError(path, f"unexpected dtype {values.dtype}")
        return self.check_size(values, path)

    def _sources_depth(self) -> list[Path]:
        return [self._path("depth", ".npy")]

    def _depth(self) -> np.ndarray:
        depth = self._float_map("depth", 0).astype(np.float32)
        return np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)

    def _sources_normals(self) -> list[Path]:
        return [self._path("normals", ".npy")]

    def _normals(self) -> np.ndarray:
        normals = self._float_map("normals", 3).astype(np.float32)
        return np.where(np.isfinite(normals), normals, 0).astype(np.float16)

    def _sources_edge(self) -> list[Path]:
        return [self._path("edge", ".npy")]

    def _edge(self) -> np.ndarray:
        return (self._float_map("edge", 0) >= 0.5).astype(np.uint8)


class NyudLayout(Layout):
    name = "nyud"
    release = (
        "the NYUD-v2 multi-task release NYUD_MT.tgz of the MTI-Net / ASTMT authors"
    )
    expected = (
        "images/, gt_sets/{train,val}.txt, segmentation/, depth/, normals/ (and edge/ for "
        "the edge task)"
    )
    image_dir = "images"
    sample_class = NyudSample
    supported_tasks = ("semseg", "depth", "normals", "edge")
    array_specs = {**ARRAYS, "normals": ArraySpec(np.float16, 3, 0)}

    def split_file(self, split: str) -> Path:
        return self.root / "gt_sets" / f"{split}.txt"

    def task_folders(self, task: str) -> dict[str, str]:
        return {
            "semseg": {"segmentation": "class PNGs"},
            "depth": {"depth": "depth .npy arrays"},
            "normals": {"normals": "normals .npy arrays"},
            "edge": {"edge": "edge .npy arrays"},
        }[task]
