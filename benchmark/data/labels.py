"""Labels as stored and as batched: every dataset stores its labels as compact arrays
(uint8 class maps and normals codes, float depth; `benchmark.data.layout`), and the
loaders turn them into the label formats of `benchmark.tasks` on the device."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from benchmark.tasks import IGNORE_INDEX

CLASS_MAP_TASKS = ("semseg", "human_parts", "sal", "edge")  # int64 labels, 255 = no label


def boundaries(labels: np.ndarray) -> np.ndarray:
    """1 where a 4-neighbour has another label (both sides of a boundary), else 0."""
    edge = np.zeros(labels.shape, dtype=bool)
    dx = labels[:, 1:] != labels[:, :-1]
    dy = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    return edge.astype(np.uint8)


def decode_normals(raw: Tensor) -> Tensor:
    """Stored normals (..., 3) as float vectors: uint8 codes v -> v*2/255-1, with the code
    (0, 0, 0) meaning no label (the zero vector); float arrays as they are."""
    if raw.dtype == torch.uint8:
        valid = (raw != 0).any(dim=-1, keepdim=True)
        return torch.where(valid, raw.float() * (2.0 / 255.0) - 1.0, 0.0)
    return raw.float()


def batch_label(task: str, raw: Tensor, valid: Tensor | None) -> Tensor:
    """Stored values (N, H, W[, C]) in the label format of `benchmark.tasks`; outside
    `valid` (N, 1, H, W), no label."""
    if task in CLASS_MAP_TASKS:
        label = raw.long()
        return label if valid is None else torch.where(valid[:, 0], label, IGNORE_INDEX)
    if task == "normals":
        label = decode_normals(raw).permute(0, 3, 1, 2)
    else:
        label = raw.float().unsqueeze(1)
    return label if valid is None else torch.where(valid, label, 0.0)
