"""Confusion-matrix mIoU of the class-map tasks `semseg` and `human_parts`."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from benchmark.metrics.meter import Meter, _safe_div
from benchmark.tasks import IGNORE_INDEX


class SegmentationMeter(Meter):
    """Confusion-matrix mIoU for ``semseg`` and ``human_parts``.

    ``pred`` is (N, C, H, W) logits in any floating dtype (the argmax is exact in every one of
    them) or an integer (N, H, W) map of class ids; ``target`` is (N, H, W) class ids with
    ``ignore_index`` for unlabelled pixels. Rows of the confusion matrix are ground truth,
    columns predictions. Labels outside ``[0, num_classes)`` other than ``ignore_index`` are
    left out and counted; ``compute`` warns about them.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        device: torch.device | str | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        super().__init__(device)

    def _new_state(self, device: torch.device) -> dict[str, Tensor]:
        c = self.num_classes
        return {
            "confusion": torch.zeros(c, c, dtype=torch.int64, device=device),
            "out_of_range": torch.zeros((), dtype=torch.int64, device=device),
        }

    def _update(self, pred: Tensor, target: Tensor) -> None:
        c = self.num_classes
        if target.dim() == 4 and target.shape[1] == 1:
            target = target.squeeze(1)
        if pred.is_floating_point():
            if pred.dim() != 4 or pred.shape[1] != c:
                raise ValueError(
                    f"expected logits of shape (N, {c}, H, W), got {tuple(pred.shape)}"
                )
            labels = pred.argmax(dim=1)
        else:
            labels = pred
        if labels.shape != target.shape:
            raise ValueError(
                f"label shape {tuple(target.shape)} does not match prediction "
                f"{tuple(pred.shape)} (predictions must be at label resolution)"
            )
        target, labels = target.long(), labels.long()
        labelled = target != self.ignore_index
        in_range = (target >= 0) & (target < c) & (labels >= 0) & (labels < c)
        counted = labelled & in_range
        index = torch.where(counted, target * c + labels, 0).reshape(-1)
        state = self._state
        state["confusion"].view(-1).index_add_(0, index, counted.reshape(-1).long())
        state["out_of_range"].add_((labelled & ~in_range).sum())

    def confusion_matrix(self) -> Tensor:
        """The accumulated (num_classes, num_classes) int64 matrix, rows = ground truth."""
        return self._state["confusion"].clone()

    def per_class_iou(self) -> list[float]:
        """IoU of every class in percent (0 for a class absent from labels and predictions)."""
        cm = self._state["confusion"].cpu().to(torch.float64)
        tp = cm.diagonal()
        union = cm.sum(0) + cm.sum(1) - tp
        return (100.0 * _safe_div(tp, union, 0.0)).tolist()

    def compute(self) -> dict[str, float]:
        skipped = int(self._state["out_of_range"])
        if skipped:
            warnings.warn(
                f"{skipped} labelled pixels had a class outside [0, {self.num_classes}) "
                "and were left out of the confusion matrix",
                RuntimeWarning,
                stacklevel=2,
            )
        cm = self._state["confusion"].cpu().to(torch.float64)
        ious = self.per_class_iou()
        total = float(cm.sum())
        return {
            "miou": sum(ious) / len(ious),
            "pixel_acc": 100.0 * float(cm.diagonal().sum()) / total if total else math.nan,
        }
