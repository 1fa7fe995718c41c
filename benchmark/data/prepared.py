"""The preprocessed cache of a real dataset: decoded once, memory-mapped afterwards.

Decoding JPEGs, PNGs and .mat files every epoch would starve the model, so the first load of
a split decodes every image once into one uint8 (or float) `.npy` array per task plus one
for the images. Each image sits in the top-left corner of a canvas as large as the split's
largest image, with its true (height, width) in `sizes`; outside it the labels hold their
"no label" value and the image repeats its last row and column (so that bilinear sampling
at the border does not blend in black). Later loads memory-map the arrays: a batch reads
only the images it gathers, and the page cache keeps what the epochs revisit.

Files live under `<cache dir>/<dataset>/<hash of the root path>/<split>/` as
`<array>-<key>.npy` (and `sizes-<key>.npy`). An array's key hashes the format version, the
split's ids, the canvas, the images' key and the path, size and modification time of every
file the array is decoded from: editing, adding or replacing any source file changes the
key, so that array is decoded again and its stale file removed, while the arrays of
untouched tasks are kept. Each file is written under a temporary name and renamed into
place, so an interrupted build never leaves a partial array behind.

Disk: about 9 bytes per canvas pixel for PASCAL-Context's image and four tasks (500 x 500
canvas: 2.25 MB per image, about 23 GB for the 10,103 images of both splits); NYUD-v2's
image, semseg, depth and normals take 14 bytes per pixel (about 6 GB).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.atomic import atomic_write
from benchmark.data.layout import ArraySpec, DataError, Layout
from benchmark.data.pool import pool_context
from benchmark.errors import UserError

CACHE_VERSION = 1
MAX_PROBLEMS = 20  # lines `verify` prints before summarising the rest with a count


@dataclass
class PreparedSplit:
    """A split as memory-mapped canvases: `arrays[name]` is (N, H, W[, C])."""

    ids: list[str]
    sizes: np.ndarray  # (N, 2) int32: each image's true (height, width)
    arrays: dict[str, np.ndarray]


def split_dir(layout: Layout, split: str, cache_root: Path) -> Path:
    root_id = hashlib.sha256(str(layout.root.resolve()).encode()).hexdigest()[:12]
    return Path(cache_root) / layout.name / root_id / split


def _digest(parts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def _stamp(path: Path, root: Path) -> str:
    """Path (relative to the root), size and modification time of one source file."""
    try:
        rel = str(path.relative_to(root))
    except ValueError:
        rel = str(path)
    try:
        st = path.stat()
    except OSError:
        return f"{rel} missing"
    return f"{rel} {st.st_size} {st.st_mtime_ns}"


def load_split(
    layout: Layout,
    split: str,
    cache_root: Path,
    progress: bool = True,
    workers: int | None = None,
) -> PreparedSplit:
    """The arrays of `split`, decoded into the cache on first use (or when a source changed).

    Raises `UserError` naming the file when one is missing or cannot be decoded.
    """
    try:
        ids = layout.ids(split)
    except DataError as err:
        raise UserError(f"{err}; {layout.where()} does not hold {layout.expected}") from None
    if not ids:
        raise UserError(f"{layout.split_file(split)} lists no image ids")
    samples = [layout.sample(i) for i in ids]
    directory = split_dir(layout, split, cache_root)
    head = [f"v{CACHE_VERSION}", layout.name, split, *ids]

    image_stamps = [_stamp(p, layout.root) for s in samples for p in s.sources("image")]
    image_key = _digest([*head, "image", *image_stamps])
    sizes_path = directory / f"sizes-{image_key}.npy"
    sizes = _open(sizes_path, (len(ids), 2), np.int32)
    if sizes is None:
        sizes = _read_sizes(samples, layout)
        _write_atomic(sizes_path, sizes)
        _remove_stale(directory, "sizes", sizes_path)
    sizes = np.asarray(sizes)
    canvas = (int(sizes[:, 0].max()), int(sizes[:, 1].max()))

    arrays: dict[str, np.ndarray] = {}
    missing: dict[str, Path] = {}
    for name in layout.array_names:
        spec = layout.array_specs[name]
        stamps = image_stamps if name == "image" else [
            _stamp(p, layout.root) for s in samples for p in s.sources(name)
        ]
        key = _digest([*head, name, str(spec), f"{canvas}", image_key, *stamps])
        path = directory / f"{name}-{key}.npy"
        array = _open(path, _file_shape(len(ids), canvas, spec), spec.dtype)
        if array is None:
            missing[name] = path
        else:
            arrays[name] = array
    if missing:
        _build(layout, split, samples, canvas, missing, progress, workers)
        for name, path in missing.items():
            arrays[name] = np.load(path, mmap_mode="c")
            _remove_stale(directory, name, path)
    return PreparedSplit(ids, sizes, arrays)


def _file_shape(n: int, canvas: tuple[int, int], spec: ArraySpec) -> tuple[int, ...]:
    """(N, H, W) or (N, H, W, C): the shape of an array's file for `n` images."""
    return (n, *canvas, *((spec.channels,) if spec.channels else ()))


def _read_sizes(samples, layout: Layout) -> np.ndarray:
    try:
        return np.array([s.size for s in samples], dtype=np.int32).reshape(-1, 2)
    except DataError as err:
        raise UserError(_explain(err, layout)) from None


def _explain(err: DataError, layout: Layout) -> str:
    return (
        f"{err}; `python -m benchmark.data verify dataset={layout.name} "
        f"dataset.root={layout.root}` lists every problem"
    )


def _open(path: Path, shape: tuple[int, ...], dtype) -> np.ndarray | None:
    """The memory-mapped array at `path`, or None when missing or not of `shape` and `dtype`."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, mmap_mode="c")
    except Exception:  # unreadable in any way: build it again
        return None
    if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
        return None
    return array


def _tmp_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_atomic(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda fh: np.save(fh, array), tmp=_tmp_path(path))


def _remove_stale(directory: Path, name: str, keep: Path) -> None:
    for old in directory.glob(f"{name}-*.npy"):
        if old != keep:
            with contextlib.suppress(OSError):
                old.unlink()


def _build(layout, split, samples, canvas, missing: dict[str, Path], progress, workers) -> None:
    """Decode the `missing` arrays of every sample into their files, atomically."""
    from numpy.lib.format import open_memmap

    n = len(samples)
    names = list(missing)
    tmps = {name: _tmp_path(p) for name, p in missing.items()}
    next(iter(missing.values())).parent.mkdir(parents=True, exist_ok=True)
    outputs = {}
    try:
        for name in names:
            spec = layout.array_specs[name]
            shape = _file_shape(n, canvas, spec)
            outputs[name] = open_memmap(tmps[name], mode="w+", dtype=spec.dtype, shape=shape)
        desc = f"preparing {layout.name} {split} ({', '.join(names)})"
        ids = [s.id for s in samples]
        for i, decoded in _map_samples(_decode, layout, ids, names, workers, progress, desc):
            for name, value in decoded.items():
                _place(outputs[name], i, value, name, layout.array_specs[name].fill)
        for name in names:
            outputs[name].flush()
        outputs.clear()  # close the maps before renaming
        for name in names:
            os.replace(tmps[name], missing[name])
    except DataError as err:
        raise UserError(_explain(err, layout)) from None
    finally:
        outputs.clear()
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


def _place(out: np.ndarray, i: int, value: np.ndarray, name: str, fill: float) -> None:
    h, w = value.shape[:2]
    out[i, :h, :w] = value
    if name == "image":  # repeat the last column and row: bilinear borders stay clean
        out[i, :h, w:] = value[:, -1:]
        out[i, h:] = out[i, h - 1 : h]
    else:
        out[i, :h, w:] = fill
        out[i, h:] = fill


def _decode(layout: Layout, ids: list[str], names: list[str]) -> list[dict[str, np.ndarray]]:
    out = []
    for image_id in ids:
        sample = layout.sample(image_id)
        out.append({name: sample.read(name) for name in names})
    return out


def _check(layout: Layout, ids: list[str], names: list[str]) -> list[list[str]]:
    """Every problem of each sample, as text."""
    out = []
    for image_id in ids:
        sample = layout.sample(image_id)
        problems = []
        for name in names:
            try:
                sample.read(name)
            except DataError as err:
                problems.append(str(err))
        out.append(problems)
    return out


def _map_samples(
    fn: Callable, layout: Layout, ids: list[str], names: list[str], workers: int | None,
    progress: bool, desc: str,
) -> Iterator[tuple[int, object]]:
    """(index, fn's result for that id), in order, decoded in worker processes when there
    are enough images to pay for them."""
    from tqdm.auto import tqdm

    n = len(ids)
    if workers is None:
        workers = min(os.cpu_count() or 1, 16) if n >= 64 else 1
    chunk = max(1, min(32, -(-n // (4 * max(1, workers)))))
    bounds = [(s, min(n, s + chunk)) for s in range(0, n, chunk)]
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False)
    try:
        if workers <= 1:
            for s, e in bounds:
                for j, result in enumerate(fn(layout, ids[s:e], names)):
                    yield s + j, result
                bar.update(e - s)
        else:
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=pool_context()) as ex:
                # A bounded window of chunks in flight keeps memory flat on large splits.
                pending: dict[int, concurrent.futures.Future] = {}
                window = 4 * workers
                for k, (s, e) in enumerate(bounds):
                    pending[k] = ex.submit(fn, layout, ids[s:e], names)
                    if k >= window:
                        yield from _drain(pending, k - window, bounds, bar)
                for k in sorted(pending):
                    yield from _drain(pending, k, bounds, bar)
    finally:
        bar.close()


def _drain(pending, k, bounds, bar):
    s, e = bounds[k]
    results = pending.pop(k).result()
    for j, result in enumerate(results):
        yield s + j, result
    bar.update(e - s)


@dataclass
class Report:
    """What `verify` found: images per split and one line per problem."""

    counts: dict[str, int]
    problems: list[str]


def verify(layout: Layout, progress: bool = True, workers: int | None = None) -> Report:
    """Check the layout and decode every file the configured tasks need."""
    if not layout.root.is_dir():
        raise UserError(
            f"dataset.root={layout.root} is not a directory; expected there {layout.expected} "
            f"({layout.release})"
        )
    problems: list[str] = []
    missing_folders = set()
    for folder, what in layout.folders().items():
        if not (layout.root / folder).is_dir():
            problems.append(f"{layout.root / folder}: missing folder ({what})")
            missing_folders.add(folder)
    # Labels are checked against their image's size: without the images, nothing to check.
    names = []
    if layout.image_dir not in missing_folders:
        names = ["image"]
        names += [t for t in layout.tasks if not set(layout.task_folders(t)) & missing_folders]
    counts: dict[str, int] = {}
    seen = set(problems)
    for split in layout.splits:
        try:
            ids = layout.ids(split)
        except DataError as err:
            problems.append(str(err))
            continue
        counts[split] = len(ids)
        if not ids or not names:
            continue
        desc = f"verifying {layout.name} {split}"
        for _, found in _map_samples(_check, layout, ids, names, workers, progress, desc):
            for line in found:
                if line not in seen:
                    seen.add(line)
                    problems.append(line)
    return Report(counts, problems)
