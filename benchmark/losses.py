"""Task losses and their weighted multi-task sum (protocol §1.1).

Predictions are at label resolution; label formats are those of ``benchmark.tasks``. Every
loss is a mean over the *valid* pixels of the whole batch (not a mean of per-image means) and
is computed in float32 with autocast disabled, whatever the dtype of the prediction. A batch
without a single valid pixel gives a loss of exactly 0 that is still connected to the
prediction (zero gradients, no NaN), so every rank of a distributed run keeps the same graph.

* ``semseg``, ``human_parts``: cross-entropy, label 255 ignored.
* ``sal``: class-balanced binary cross-entropy of MTI-Net / ATRC, with the positive weight
  ``w = 1 - positives / valid pixels`` of the batch (a constant, no gradient) and ``1 - w`` on
  the negatives; label 255 ignored.
* ``edge``: the same balanced BCE with the fixed positive weight ``w = 0.95``.
* ``normals``: L1 between the L2-normalised prediction and the label, averaged over the three
  channels of the pixels whose label has non-zero norm.
* ``depth``: L1 over the pixels with a label > 0.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.tasks import IGNORE_INDEX, TASKS, check_normals, single_channel_label, task_spec

__all__ = ["EDGE_POS_WEIGHT", "MultiTaskLoss", "balanced_bce", "task_loss"]

EDGE_POS_WEIGHT = 0.95

LossFn = Callable[[Tensor, Tensor], Tensor]


def _float32(fn: LossFn) -> LossFn:
    """Run ``fn`` on a float32 prediction with autocast off for the prediction's device."""

    @functools.wraps(fn)
    def wrapper(pred: Tensor, target: Tensor) -> Tensor:
        device_type = pred.device.type
        if torch.amp.is_autocast_available(device_type):
            context = torch.autocast(device_type=device_type, enabled=False)
        else:
            context = contextlib.nullcontext()
        with context:
            return fn(pred.float(), target.to(pred.device))

    return wrapper


def _mean_over(values: Tensor, valid: Tensor, per_pixel: int = 1) -> Tensor:
    """Sum of ``values`` where ``valid`` divided by ``per_pixel * (number of valid pixels)``.

    Division by at least 1 keeps an all-invalid batch at 0 (with a grad_fn) instead of NaN;
    no host synchronisation.
    """
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / (valid.sum() * per_pixel).clamp_min(1)


@_float32
def _cross_entropy(pred: Tensor, target: Tensor) -> Tensor:
    if target.dim() == 4 and target.shape[1] == 1:
        target = target.squeeze(1)
    if pred.dim() != 4 or target.shape != (pred.shape[0], *pred.shape[2:]):
        raise ValueError(
            f"expected logits (N, C, H, W) and labels (N, H, W), got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    target = target.long()
    summed = F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX, reduction="sum")
    return summed / (target != IGNORE_INDEX).sum().clamp_min(1)


def _balanced_bce_impl(pred: Tensor, target: Tensor, pos_weight: float | None) -> Tensor:
    target = single_channel_label(pred, target, "balanced BCE")
    valid = target != IGNORE_INDEX
    positive = valid & (target >= 0.5)
    # The automatic weight comes from the labels only, so it carries no gradient.
    w = 1.0 - positive.sum() / valid.sum().clamp_min(1) if pos_weight is None else float(pos_weight)
    # -log(sigmoid(z)) and -log(1 - sigmoid(z)) = -log(sigmoid(-z)), both stable for any z;
    # torch.where picks one term per pixel so an infinite unused term cannot leak a NaN.
    per_pixel = torch.where(positive, w * -F.logsigmoid(pred), (1.0 - w) * -F.logsigmoid(-pred))
    return _mean_over(per_pixel, valid)


@_float32
def _saliency_bce(pred: Tensor, target: Tensor) -> Tensor:
    return _balanced_bce_impl(pred, target, None)


@_float32
def _edge_bce(pred: Tensor, target: Tensor) -> Tensor:
    return _balanced_bce_impl(pred, target, EDGE_POS_WEIGHT)


def balanced_bce(pred: Tensor, target: Tensor, pos_weight: float | None = None) -> Tensor:
    """Class-balanced binary cross-entropy on logits, mean over the valid pixels.

    ``loss = mean_valid[ w * y * -log(sigmoid(z)) + (1 - w) * (1 - y) * -log(1 - sigmoid(z)) ]``
    with ``w = pos_weight`` or, when ``None``, ``w = 1 - positives / valid pixels`` over the
    batch. ``pred`` is (N, 1, H, W) logits, ``target`` (N, H, W) or (N, 1, H, W) with 0/1 and
    255 for ignored pixels.
    """
    return _float32(functools.partial(_balanced_bce_impl, pos_weight=pos_weight))(pred, target)


@_float32
def _normals_l1(pred: Tensor, target: Tensor) -> Tensor:
    check_normals(pred, target)
    target = target.float()
    valid = (target != 0).any(dim=1, keepdim=True)
    diff = (F.normalize(pred, dim=1) - target).abs()
    return _mean_over(diff, valid.expand_as(diff))


@_float32
def _depth_l1(pred: Tensor, target: Tensor) -> Tensor:
    target = single_channel_label(pred, target, "depth").float()
    valid = target > 0
    # Zero the unlabelled targets first so that a NaN there cannot reach the gradient.
    target = torch.where(valid, target, torch.zeros_like(target))
    return _mean_over((pred - target).abs(), valid)


_LOSSES: dict[str, LossFn] = {
    "semseg": _cross_entropy,
    "human_parts": _cross_entropy,
    "sal": _saliency_bce,
    "edge": _edge_bce,
    "normals": _normals_l1,
    "depth": _depth_l1,
}


def task_loss(task: str) -> LossFn:
    """The loss ``fn(pred, target) -> scalar float32 tensor`` of ``task``."""
    task_spec(task)  # unknown task -> ValueError
    try:
        return _LOSSES[task]
    except KeyError:
        raise ValueError(f"no loss defined for task {task!r}") from None


class MultiTaskLoss(torch.nn.Module):
    """Weighted sum of the task losses.

    ``weights`` overrides the paper weights of ``benchmark.tasks`` for the tasks it names; the
    other tasks keep theirs. ``forward`` returns the weighted total and the unweighted
    per-task losses, detached but left on the device (no host synchronisation).
    """

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("MultiTaskLoss needs at least one task")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"duplicate tasks in {list(tasks)}")
        weights = dict(weights or {})
        unknown = set(weights) - set(tasks)
        if unknown:
            raise ValueError(f"weights given for tasks not in {list(tasks)}: {sorted(unknown)}")
        self.tasks = list(tasks)
        self.losses = {task: task_loss(task) for task in self.tasks}
        self.weights = {
            task: float(weights.get(task, TASKS[task].loss_weight)) for task in self.tasks
        }

    def forward(
        self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        total: Tensor | None = None
        per_task: dict[str, Tensor] = {}
        for task in self.tasks:
            if task not in outputs:
                raise KeyError(f"model outputs have no prediction for task {task!r}")
            if task not in batch:
                raise KeyError(f"batch has no label for task {task!r}")
            loss = self.losses[task](outputs[task], batch[task])
            weighted = self.weights[task] * loss
            total = weighted if total is None else total + weighted
            per_task[task] = loss.detach()
        assert total is not None
        return total, per_task

    def extra_repr(self) -> str:
        return ", ".join(f"{task}={w:g}" for task, w in self.weights.items())
