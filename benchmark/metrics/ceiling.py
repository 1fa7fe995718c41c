"""How well a decoder whose logits live on a coarse grid can segment at best.

The harness's decoders predict on the finest stage map (stride 8 of the input: the stage
outputs are taken after patch merging, protocol §2.1) and upsample the logits bilinearly to
the labels. `grid_ceiling` scores the best such prediction a model could make without
seeing past the grid: the one-hot labels averaged over each stride x stride cell (the class
shares of the cell), upsampled bilinearly as the decoder does, then the argmax. A task whose
objects are small against the grid has a low ceiling whatever the backbone learns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.metrics.segmentation import SegmentationMeter
from benchmark.tasks import IGNORE_INDEX


def grid_ceiling(labels: Tensor, num_classes: int, stride: int, chunk: int = 64,
                 ignore_index: int = IGNORE_INDEX) -> SegmentationMeter:
    """A meter holding the grid-limited prediction of (N, H, W) class ids `labels` (H and W
    multiples of `stride`; `ignore_index` pixels neither vote nor count)."""
    n, h, w = labels.shape
    if stride < 1 or h % stride or w % stride:
        raise ValueError(f"stride {stride} must be positive and divide the size {h}x{w}")
    meter = SegmentationMeter(num_classes, ignore_index=ignore_index)
    for start in range(0, n, chunk):
        target = labels[start:start + chunk].long()
        labelled = target != ignore_index
        votes = F.one_hot(torch.where(labelled, target, 0), num_classes).permute(0, 3, 1, 2)
        shares = F.avg_pool2d(votes.float() * labelled[:, None], stride)
        up = F.interpolate(shares, size=(h, w), mode="bilinear", align_corners=False)
        meter.update(up.argmax(dim=1), target)
    return meter
