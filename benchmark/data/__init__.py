"""Datasets: what each provides (`dataset_info`), loading it, and batching it.

Every dataset arrives as in-memory arrays (uint8 images and labels, float normals and
depth) per split; `BatchLoader` gathers shuffled batches from them, applies the train-time
augmentation on the whole batch and converts it to the label formats of `benchmark.tasks`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from benchmark.errors import UserError
from benchmark.tasks import FIXED_OUTPUTS, TASKS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    tasks: list[str]
    num_outputs: dict[str, int]
    image_size: int
    eval_resolution: str


def dataset_info(cfg: DictConfig) -> DatasetInfo:
    """Tasks, output widths and image size of a `dataset` config, without loading data."""
    tasks = list(cfg.tasks)
    for task in tasks:
        if task not in TASKS:
            raise UserError(
                f"unknown task {task!r} in dataset.tasks; choose from {', '.join(TASKS)}"
            )
    if len(set(tasks)) != len(tasks) or not tasks:
        raise UserError(f"dataset.tasks must name distinct tasks, got {tasks}")
    if cfg.name == "synthetic":
        from benchmark.data.synthetic import NUM_SEMSEG_CLASSES

        num_classes = NUM_SEMSEG_CLASSES
        eval_resolution = str(cfg.image_size)
    else:
        num_classes = cfg.num_classes
        eval_resolution = str(cfg.eval_resolution)
    outputs = {t: num_classes if t == "semseg" else FIXED_OUTPUTS[t] for t in tasks}
    return DatasetInfo(cfg.name, tasks, outputs, int(cfg.image_size), eval_resolution)


@dataclass
class Split:
    """One split as arrays: `image` (N, H, W, 3) uint8 and one array per label."""

    arrays: dict[str, Tensor]

    def __len__(self) -> int:
        return self.arrays["image"].shape[0]


@dataclass
class MultiTaskData:
    info: DatasetInfo
    train: Split
    val: Split


def load_dataset(cfg: DictConfig, progress: bool = True) -> MultiTaskData:
    info = dataset_info(cfg)
    if cfg.name != "synthetic":
        raise UserError(
            f"dataset {cfg.name}: training on the real data is not available in this version; "
            "use dataset=synthetic (python -m benchmark.params works with every dataset)"
        )
    from benchmark.data import synthetic

    root = Path(cfg.cache_dir).expanduser() if cfg.get("cache_dir") else None
    keep = ["image", *info.tasks]
    splits = {}
    for split, size in (("train", cfg.train_size), ("val", cfg.val_size)):
        arrays = synthetic.load_split(
            cfg.seed, split, int(size), info.image_size, root=root, progress=progress
        )
        splits[split] = Split({k: torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in keep})
    return MultiTaskData(info, splits["train"], splits["val"])


class BatchLoader:
    """Batches of a `Split` on `device`, in the label formats of `benchmark.tasks`.

    The order is a permutation drawn from (seed, epoch), so a run is reproducible and a
    resumed run sees the same batches. `augment` flips each image horizontally with
    probability 1/2, negating the x component of its normals.
    """

    def __init__(
        self,
        split: Split,
        tasks: Sequence[str],
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        max_batches: int | None = None,
        max_images: int | None = None,
    ):
        self.split = split
        self.tasks = list(tasks)
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        size = len(split) if max_images is None else min(len(split), max_images)
        self.size = size
        batches = size // batch_size if drop_last else -(-size // batch_size)
        if batches == 0:
            raise UserError(
                f"batch size {batch_size} is larger than the {size} training images; "
                "lower budget.batch_size or enlarge the dataset"
            )
        self.num_batches = batches if max_batches is None else min(batches, max_batches)
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
        self._mean, self._std = mean, std

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.shuffle:
            order = torch.randperm(self.size, generator=gen)
        else:
            order = torch.arange(self.size)
        for b in range(self.num_batches):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            flip = torch.rand(len(idx), generator=gen) < 0.5 if self.augment else None
            yield self._batch(idx, flip)

    def _batch(self, idx: Tensor, flip: Tensor | None) -> dict[str, Tensor]:
        arrays = self.split.arrays
        image = arrays["image"][idx].to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        batch = {"image": (image.float() - self._mean) / self._std}
        for task in self.tasks:
            label = arrays[task][idx].to(self.device, non_blocking=True)
            if task == "normals":
                label = label.permute(0, 3, 1, 2).float()
            elif task == "depth":
                label = label.unsqueeze(1).float()
            else:
                label = label.long()
            batch[task] = label
        if flip is not None and bool(flip.any()):
            flip = flip.to(self.device)
            for key, value in batch.items():
                flipped = value.flip(-1)
                if key == "normals":
                    flipped[:, 0] = -flipped[:, 0]
                mask = flip.view(-1, *([1] * (value.dim() - 1)))
                batch[key] = torch.where(mask, flipped, value)
        return batch
