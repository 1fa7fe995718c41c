"""Datasets: what each provides (`dataset_info`, `benchmark.data.registry`), loading it
(`benchmark.data.splits`), and batching it (`benchmark.data.loader`).

Every dataset arrives as arrays per split (uint8 images and labels, float normals and
depth); `BatchLoader` gathers shuffled batches from them, applies the train-time
augmentation on the whole batch, on the device, and converts it to the label formats of
`benchmark.tasks`. The trainer never needs to know which dataset it has:

- `synthetic` (protocol §1.3): rendered at the model's input size; the only augmentation is a
  horizontal flip (negating the x component of normals).
- `pascal_context` (protocol §1.1) and `nyud` (protocol §1.2): decoded once from `dataset.root` into
  a memory-mapped cache (`benchmark.data.prepared`), images of varying size on one canvas
  per split. Batches are resized to `dataset.image_size` square, and training batches are
  flipped, rotated and scaled on the way (`benchmark.data.transforms`). With
  `dataset.eval_resolution=original` the predictions are resized back to each image's own
  size and scored there; otherwise the labels are resized (nearest) to the input size.
"""

from __future__ import annotations

from benchmark.data.loader import IMAGENET_MEAN, IMAGENET_STD, BatchLoader
from benchmark.data.registry import (
    REAL_DATASETS,
    DatasetInfo,
    check_dataset,
    dataset_info,
    make_layout,
)
from benchmark.data.splits import (
    MultiTaskData,
    Split,
    labels_at_original_size,
    load_dataset,
    load_real_split,
    place_split,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REAL_DATASETS",
    "BatchLoader",
    "DatasetInfo",
    "MultiTaskData",
    "Split",
    "check_dataset",
    "dataset_info",
    "labels_at_original_size",
    "load_dataset",
    "load_real_split",
    "make_layout",
    "place_split",
]
