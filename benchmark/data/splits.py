"""The train and val splits of a dataset as arrays (`Split`), loaded from the synthetic
renderer's or a real dataset's cache (`load_dataset`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from benchmark.data.cache import cache_root
from benchmark.data.labels import batch_label
from benchmark.data.registry import (
    REAL_DATASETS,
    SYNTHETIC,
    DatasetInfo,
    data_spec,
    dataset_info,
    make_layout,
)
from benchmark.data.transforms import Geometry
from benchmark.errors import UserError

if TYPE_CHECKING:
    from benchmark.config.parts import DataSpec


@dataclass
class Split:
    """One split as arrays: `image` (N, H, W, 3) uint8 and one array per label.

    Real datasets hold every image in the top-left corner of a common canvas: `sizes`
    (N, 2) gives each one's true (height, width), `ids` its name, and `geometry` how a batch
    becomes the model's input. Without `geometry` the arrays are already at input size.
    """

    arrays: dict[str, Tensor]
    sizes: Tensor | None = None
    ids: list[str] | None = None
    geometry: Geometry | None = None
    # copies of the arrays on a device, by device name (`place_split`)
    placed: dict[str, Split] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return self.arrays["image"].shape[0]

    @property
    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() for a in self.arrays.values())


def place_split(split: Split, device: torch.device, share: float) -> Split:
    """`split` with its arrays on the GPU `device` when they fit in `share` of its free
    memory (counting what PyTorch holds cached but unused), else `split` as it is.

    Batches are then gathered and augmented on the GPU with no copy from the host at all.
    The copy is made once and kept with `split`, so the runs of a sweep share it.
    """
    if device.type != "cuda" or share <= 0:
        return split
    key = str(device)
    if key not in split.placed:
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        if split.nbytes > share * free:
            return split
        arrays = {k: torch.as_tensor(v).to(device) for k, v in split.arrays.items()}
        split.placed[key] = replace(split, arrays=arrays, placed={})
    return split.placed[key]


@dataclass
class MultiTaskData:
    info: DatasetInfo
    train: Split
    val: Split


def load_dataset(spec: DataSpec | DictConfig, progress: bool = True) -> MultiTaskData:
    spec = data_spec(spec)
    info = dataset_info(spec)
    if spec.name in REAL_DATASETS:
        return _load_real(spec, info, progress)
    if spec.name != SYNTHETIC:
        raise UserError(f"dataset {spec.name}: no loader; use synthetic, pascal_context or nyud")
    from benchmark.data import synthetic

    root = cache_root(spec)
    keep = ["image", *info.tasks]
    splits = {}
    for split, size in (("train", spec.train_size), ("val", spec.val_size)):
        arrays = synthetic.load_split(
            spec.seed, split, int(size), info.image_size, root=root, progress=progress
        )
        splits[split] = Split({k: torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in keep})
    return MultiTaskData(info, splits["train"], splits["val"])


def load_real_split(spec: DataSpec | DictConfig, split: str, progress: bool = True) -> Split:
    """One split of `pascal_context` or `nyud`, from the prepared cache (built on first use)."""
    from benchmark.data import prepared

    spec = data_spec(spec)
    info = dataset_info(spec)
    layout = make_layout(spec)
    layout.check()
    geometry = Geometry(
        size=info.image_size,
        normals_y=str(spec.normals_y),
        original_resolution=info.eval_resolution == "original",
        augment=str(spec.augment),
    )
    data = prepared.load_split(layout, split, cache_root(spec), progress=progress)
    arrays = {k: torch.from_numpy(v) for k, v in data.arrays.items()}
    return Split(arrays, torch.from_numpy(np.asarray(data.sizes)), data.ids, geometry)


def _load_real(spec: DataSpec, info: DatasetInfo, progress: bool) -> MultiTaskData:
    train = load_real_split(spec, "train", progress)
    val = load_real_split(spec, "val", progress)
    return MultiTaskData(info, train, val)


def labels_at_original_size(
    split: Split, index: int, tasks: Sequence[str], device: torch.device
) -> dict[str, Tensor]:
    """The labels of image `index` of a canvas split at its own size, as a batch of one."""
    h, w = (int(v) for v in split.sizes[index])
    return {
        task: batch_label(task, split.arrays[task][index : index + 1, :h, :w].to(device), None)
        for task in tasks
    }
