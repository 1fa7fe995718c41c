"""Whole splits: rendered in chunks (in a process pool when there are several CPUs) and
cached as .npz files (see "Caching" in the package docstring)."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib

import numpy as np

from benchmark.atomic import atomic_write
from benchmark.data.cache import cache_dir
from benchmark.data.pool import pool_context
from benchmark.data.synthetic.constants import (
    _SPLIT_CODES,
    RENDER_VERSION,
    TASK_ARRAYS,
    UPSTREAM_VERSION,
)
from benchmark.data.synthetic.scene import render_scene
from benchmark.data.synthetic.upstream import render_upstream_image


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



def _cache_path(root, kind, seed, split, size, image_size) -> pathlib.Path:
    base = pathlib.Path(root).expanduser() if root is not None else cache_dir()
    version = UPSTREAM_VERSION if kind == "upstream" else RENDER_VERSION
    name = f"{kind}-v{version}-seed{seed}-{split}-n{size}-px{image_size}.npz"
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
