"""Streaming evaluation meters for the dense-prediction tasks and the multi-task score Δm.

Every meter accumulates sufficient statistics over a whole split and turns them into metrics
only in :meth:`Meter.compute`. The protocol (protocol §1.4, following the MTI-Net / ATRC evaluation
code that MTLoRA reports with):

* ``semseg`` / ``human_parts`` -- one confusion matrix over the split (argmax of the logits
  against the label, label 255 ignored); ``miou`` is the mean of TP / (TP + FP + FN) over *all*
  classes, background included, where a class absent from both ground truth and prediction
  scores 0; ``pixel_acc`` is the share of valid pixels predicted correctly.
* ``sal`` -- ``miou``: for each threshold of ``linspace(0.2, 0.9, 15)`` the IoU of
  ``sigmoid(logit) > t`` against the label per image (1 when both masks are empty), averaged
  over images, then the maximum over thresholds. ``maxf``: F-measure with beta^2 = 0.3 from
  precision and recall pooled over all pixels of the split, maximum over the thresholds
  ``0.05, 0.10, ..., 0.95``. ``maxf_official``: the number the official MTLoRA / ASTMT
  evaluator prints as "Beta maxF", which applies a second sigmoid to the probabilities and
  counts a pixel salient when ``sigmoid(prob) >= t`` (same thresholds, same pooling); it is
  kept only so that results can be set beside papers that report it (``maxf`` is the correct
  formula).
* ``normals`` -- angle in degrees between the L2-normalised prediction and label over every
  valid pixel of the split (label of non-zero norm): ``mean`` (the primary metric; the papers
  and the official evaluator call it "rmse"), ``median``, ``rms`` (the true root mean square
  of the angle; records written before it was renamed call it ``rmse`` and are migrated when
  read, see ``benchmark.records``), and the shares of pixels below 11.25, 22.5 and 30
  degrees.
* ``depth`` -- ``rmse`` and ``abs_rel`` over the valid pixels of the split (label > 0).
* ``edge`` -- pixel-level ``maxf`` (beta^2 = 1), see :class:`EdgeMeter`.

All values are percentages except angles (degrees) and depth errors (label units).

State lives in tensors on the device of the predictions; ``update`` issues no host
synchronisation (no ``.item()``, no data-dependent Python branching, no boolean indexing), so
it can run inside an asynchronous evaluation loop. Every piece of state is a sum: distributed
evaluation reduces the tensors of :meth:`Meter.state_tensors` with ``all_reduce`` (SUM, in
place) on every rank before calling ``compute``.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.tasks import FIXED_OUTPUTS, IGNORE_INDEX, single_channel_label, task_spec

__all__ = [
    "DepthMeter",
    "EdgeMeter",
    "Meter",
    "NormalsMeter",
    "SaliencyMeter",
    "SegmentationMeter",
    "TaskMeters",
    "build_meter",
    "delta_m",
]

# Thresholds of the saliency and edge protocols. They are rebuilt on the meter's device from
# these recipes (no host-to-device copy during ``update``).
SAL_IOU_THRESHOLDS = (0.2, 0.9, 15)  # linspace(start, end, steps)
F_THRESHOLD_STEP, F_THRESHOLD_COUNT = 0.05, 19  # 0.05, 0.10, ..., 0.95
SAL_BETA2 = 0.3
EDGE_BETA2 = 1.0
NORMALS_WITHIN = (11.25, 22.5, 30.0)
NORMALS_BIN_WIDTH = 0.01  # degrees; the median is read from a histogram of this resolution
NORMALS_BINS = 18000  # 180 / 0.01


def _linspace_thresholds(device: torch.device) -> Tensor:
    start, end, steps = SAL_IOU_THRESHOLDS
    return torch.linspace(start, end, steps, device=device, dtype=torch.float32)


def _f_thresholds(device: torch.device) -> Tensor:
    steps = torch.arange(1, F_THRESHOLD_COUNT + 1, device=device, dtype=torch.float64)
    return (steps * F_THRESHOLD_STEP).to(torch.float32)


def _official_f_thresholds(device: torch.device) -> Tensor:
    """The thresholds of the official "Beta maxF": ``torch.arange(0.05, 1, 0.05)`` in float32
    as that evaluator builds them (its 12th value is 0.59999996, one float32 step below ours)."""
    return torch.arange(F_THRESHOLD_STEP, 1, F_THRESHOLD_STEP, dtype=torch.float32).to(device)


def _suffix_sums(hist: Tensor) -> Tensor:
    """``out[..., b] = hist[..., b:].sum(-1)``."""
    return hist.flip(-1).cumsum(-1).flip(-1)


def _safe_div(num: Tensor, den: Tensor, empty: float) -> Tensor:
    """``num / den`` elementwise, ``empty`` where ``den`` is zero (float64)."""
    num, den = num.to(torch.float64), den.to(torch.float64)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, empty))


def _max_f_measure(pos_hist: Tensor, neg_hist: Tensor, beta2: float) -> float:
    """Maximum pooled F-measure over thresholds from bucketed positive/negative pixel counts.

    ``pos_hist[b]`` counts the valid positive pixels whose probability exceeds exactly ``b`` of
    the (sorted) thresholds; likewise ``neg_hist`` for negatives. A pixel is predicted positive
    at threshold ``k`` when its probability is strictly greater than it, i.e. when its bucket is
    above ``k``. Precision, recall and F are 0 where undefined.
    """
    pos, neg = _suffix_sums(pos_hist.cpu()), _suffix_sums(neg_hist.cpu())
    tp, fp = pos[1:], neg[1:]
    fn = pos[0] - tp
    precision = _safe_div(tp, tp + fp, 0.0)
    recall = _safe_div(tp, tp + fn, 0.0)
    f = _safe_div((1 + beta2) * precision * recall, beta2 * precision + recall, 0.0)
    return 100.0 * float(f.max())


class Meter(ABC):
    """Base class of the streaming meters.

    ``device`` only chooses where the (zero) state is first allocated; the first ``update``
    re-allocates it on the prediction's device if that differs, so a meter built on the CPU
    works for CUDA predictions without a copy. Build it on the evaluation device when the
    state must be all-reduced even on a rank that may see no data.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self._allocate(torch.device("cpu") if device is None else torch.device(device))

    # -- subclass hooks ---------------------------------------------------------------------
    @abstractmethod
    def _new_state(self, device: torch.device) -> dict[str, Tensor]:
        """Fresh zero state on ``device``; every entry must be reducible by summation."""

    def _new_constants(self, device: torch.device) -> dict[str, Tensor]:
        """Constant tensors ``_update`` needs on the state's device (not part of the state)."""
        return {}

    @abstractmethod
    def _update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch to the state. Must not synchronise with the host."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Metric name (without task prefix) -> value. May synchronise."""

    # -- state handling ---------------------------------------------------------------------
    def _allocate(self, device: torch.device) -> None:
        # Allocate outside inference mode so that the state stays an ordinary tensor that
        # in-place collectives (all_reduce) can modify after an inference-mode loop.
        with torch.inference_mode(False):
            self._state = self._new_state(device)
            self._const = self._new_constants(device)
        self._device = device
        self._fresh = True

    @property
    def device(self) -> torch.device:
        return self._device

    def reset(self) -> None:
        """Drop everything accumulated so far (the device is kept)."""
        self._allocate(self._device)

    def to(self, device: torch.device | str) -> Meter:
        """Move the state (and whatever it holds) to ``device``; returns ``self``."""
        device = torch.device(device)
        with torch.inference_mode(False):
            self._state = {k: v.to(device) for k, v in self._state.items()}
            self._const = self._new_constants(device)
        self._device = device
        return self

    def state_tensors(self) -> list[Tensor]:
        """The live state tensors, in a fixed order.

        They are the meter's own storage, not copies: reducing them in place (e.g.
        ``torch.distributed.all_reduce(t)`` with the default SUM) merges the state of all
        processes, after which ``compute`` gives the metrics of the union of their data.
        """
        return list(self._state.values())

    def all_reduce_(self, group=None) -> Meter:
        """Sum the state over all processes of ``group`` (no-op outside torch.distributed)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            for t in self.state_tensors():
                dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return self

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Accumulate one batch: ``pred`` as produced by the model, ``target`` as in a batch.

        The label should already be on the prediction's device; a label elsewhere is copied
        there, which may synchronise.
        """
        if pred.device != self._device:
            if self._fresh:
                self._allocate(pred.device)
            else:
                self.to(pred.device)
        target = target.to(pred.device)
        with torch.no_grad():
            self._update(pred.detach(), target.detach())
        self._fresh = False


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


class SaliencyMeter(Meter):
    """Saliency ``miou`` (max over thresholds of the image-averaged IoU), ``maxf`` and
    ``maxf_official``.

    ``pred`` is (N, 1, H, W) logits, ``target`` (N, H, W) or (N, 1, H, W) with 0/1 and
    ``ignore_index``. Probabilities are ``sigmoid(logits)`` computed once in float32; a pixel
    is salient at threshold ``t`` when its probability is strictly greater than ``t``.

    ``maxf_official`` reproduces the official evaluator's "Beta maxF": it scores
    ``q = sigmoid(prob)`` (float32), salient when ``q >= t``. As q lies in (0.5, 0.732), the
    thresholds up to 0.5 predict every pixel salient, those from 0.75 none, and only 0.55,
    0.60, 0.65 and 0.70 (a probability of 0.2007, 0.4055, 0.6190 and 0.8473) discriminate.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, device: torch.device | str | None = None):
        self.ignore_index = int(ignore_index)
        super().__init__(device)

    def _new_state(self, device: torch.device) -> dict[str, Tensor]:
        n_iou, n_f = SAL_IOU_THRESHOLDS[2], F_THRESHOLD_COUNT
        return {
            "iou_sum": torch.zeros(n_iou, dtype=torch.float64, device=device),
            "images": torch.zeros((), dtype=torch.int64, device=device),
            "pos_hist": torch.zeros(n_f + 1, dtype=torch.int64, device=device),
            "neg_hist": torch.zeros(n_f + 1, dtype=torch.int64, device=device),
            "pos_hist_official": torch.zeros(n_f + 1, dtype=torch.int64, device=device),
            "neg_hist_official": torch.zeros(n_f + 1, dtype=torch.int64, device=device),
        }

    def _new_constants(self, device: torch.device) -> dict[str, Tensor]:
        return {
            "iou_thr": _linspace_thresholds(device),
            "f_thr": _f_thresholds(device),
            "f_thr_official": _official_f_thresholds(device),
        }

    def _update(self, pred: Tensor, target: Tensor) -> None:
        target = single_channel_label(pred, target, "sal")
        n = pred.shape[0]
        prob = torch.sigmoid(pred.float()).reshape(n, -1)
        target = target.reshape(n, -1)
        valid = target != self.ignore_index
        pos = valid & (target >= 0.5)
        neg = valid & ~pos

        # Per-image IoU at every threshold from per-image bucket counts: with b = number of
        # thresholds below p, the pixel is predicted salient at threshold k iff b > k.
        thr = self._const["iou_thr"]
        buckets = thr.numel() + 1
        bucket = torch.bucketize(prob, thr)  # (n, HW) in [0, len(thr)]
        offset = torch.arange(n, device=prob.device).unsqueeze(1) * buckets
        index = (bucket + offset).reshape(-1)
        pos_img = torch.zeros(n * buckets, dtype=torch.int64, device=prob.device)
        neg_img = torch.zeros_like(pos_img)
        pos_img.index_add_(0, index, pos.reshape(-1).long())
        neg_img.index_add_(0, index, neg.reshape(-1).long())
        pos_above = _suffix_sums(pos_img.view(n, buckets))
        neg_above = _suffix_sums(neg_img.view(n, buckets))
        inter = pos_above[:, 1:]  # true positives per image and threshold
        union = neg_above[:, 1:] + pos_above[:, :1]  # FP + all positives
        iou = _safe_div(inter, union, 1.0)  # both masks empty -> 1
        self._state["iou_sum"].add_(iou.sum(0))
        self._state["images"].add_(n)

        # Pooled counts for the F-measure.
        bucket = torch.bucketize(prob, self._const["f_thr"]).reshape(-1)
        self._state["pos_hist"].index_add_(0, bucket, pos.reshape(-1).long())
        self._state["neg_hist"].index_add_(0, bucket, neg.reshape(-1).long())

        # The official "Beta maxF": a second sigmoid, and q >= t (right=True counts the
        # thresholds at or below q, so the pixel is salient at threshold k iff bucket > k).
        second = torch.sigmoid(prob).reshape(-1)
        bucket = torch.bucketize(second, self._const["f_thr_official"], right=True)
        self._state["pos_hist_official"].index_add_(0, bucket, pos.reshape(-1).long())
        self._state["neg_hist_official"].index_add_(0, bucket, neg.reshape(-1).long())

    def iou_per_threshold(self) -> list[float]:
        """Image-averaged IoU (percent) at each threshold of ``linspace(0.2, 0.9, 15)``."""
        images = int(self._state["images"])
        if images == 0:
            return [math.nan] * SAL_IOU_THRESHOLDS[2]
        return (100.0 * self._state["iou_sum"].cpu() / images).tolist()

    def compute(self) -> dict[str, float]:
        return {
            "miou": max(self.iou_per_threshold()),
            "maxf": _max_f_measure(self._state["pos_hist"], self._state["neg_hist"], SAL_BETA2),
            "maxf_official": _max_f_measure(
                self._state["pos_hist_official"], self._state["neg_hist_official"], SAL_BETA2
            ),
        }


class EdgeMeter(Meter):
    """Pixel-level edge ``maxf``: F-measure (beta^2 = 1) of ``sigmoid(logits) > t`` pooled over
    the split, maximum over the thresholds 0.05, ..., 0.95, label 255 ignored.

    This is *not* the optimal-dataset-scale F (ODS) of the SEISM / BSDS toolbox used in the
    edge-detection literature, which thins the predictions and matches boundary pixels with a
    distance tolerance; numbers from this meter are lower and not comparable to published ODS F.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, device: torch.device | str | None = None):
        self.ignore_index = int(ignore_index)
        super().__init__(device)

    def _new_state(self, device: torch.device) -> dict[str, Tensor]:
        return {
            "pos_hist": torch.zeros(F_THRESHOLD_COUNT + 1, dtype=torch.int64, device=device),
            "neg_hist": torch.zeros(F_THRESHOLD_COUNT + 1, dtype=torch.int64, device=device),
        }

    def _new_constants(self, device: torch.device) -> dict[str, Tensor]:
        return {"f_thr": _f_thresholds(device)}

    def _update(self, pred: Tensor, target: Tensor) -> None:
        target = single_channel_label(pred, target, "edge")
        prob = torch.sigmoid(pred.float()).reshape(-1)
        target = target.reshape(-1)
        valid = target != self.ignore_index
        pos = valid & (target >= 0.5)
        neg = valid & ~pos
        bucket = torch.bucketize(prob, self._const["f_thr"])
        self._state["pos_hist"].index_add_(0, bucket, pos.long())
        self._state["neg_hist"].index_add_(0, bucket, neg.long())

    def compute(self) -> dict[str, float]:
        return {
            "maxf": _max_f_measure(self._state["pos_hist"], self._state["neg_hist"], EDGE_BETA2)
        }


class NormalsMeter(Meter):
    """Angular error of surface normals, pooled over the valid pixels of the split.

    ``pred`` and ``target`` are (N, 3, H, W); both are L2-normalised, the angle is
    ``degrees(arccos(clip(dot, -1, 1)))`` and a pixel counts when its label has non-zero norm.
    ``mean``, ``rms`` and the ``within_*`` shares are exact; ``median`` is read from a
    histogram with bins of 0.01 degree (within half a bin of the exact median).
    """

    def _new_state(self, device: torch.device) -> dict[str, Tensor]:
        return {
            "angle_sum": torch.zeros((), dtype=torch.float64, device=device),
            "angle_sq_sum": torch.zeros((), dtype=torch.float64, device=device),
            "count": torch.zeros((), dtype=torch.int64, device=device),
            "within": torch.zeros(len(NORMALS_WITHIN), dtype=torch.int64, device=device),
            "hist": torch.zeros(NORMALS_BINS, dtype=torch.int64, device=device),
        }

    def _update(self, pred: Tensor, target: Tensor) -> None:
        if pred.dim() != 4 or pred.shape[1] != 3 or target.shape != pred.shape:
            raise ValueError(
                "normals: expected prediction and label of the same shape (N, 3, H, W), got "
                f"{tuple(pred.shape)} and {tuple(target.shape)}"
            )
        target = target.float()
        valid = (target != 0).any(dim=1)
        p = F.normalize(pred.float(), dim=1)
        t = F.normalize(target, dim=1)
        angle = torch.rad2deg(torch.arccos((p * t).sum(dim=1).clamp(-1.0, 1.0)))
        wide = angle.to(torch.float64)
        state = self._state
        state["angle_sum"].add_(torch.where(valid, wide, 0.0).sum())
        state["angle_sq_sum"].add_(torch.where(valid, wide * wide, 0.0).sum())
        state["count"].add_(valid.sum())
        state["within"].add_(torch.stack([(valid & (angle < th)).sum() for th in NORMALS_WITHIN]))
        bins = torch.floor(angle / NORMALS_BIN_WIDTH).long().clamp(0, NORMALS_BINS - 1)
        state["hist"].index_add_(0, bins.reshape(-1), valid.reshape(-1).long())

    def compute(self) -> dict[str, float]:
        count = int(self._state["count"])
        if count == 0:
            keys = ["mean", "median", "rms"] + [_within_key(th) for th in NORMALS_WITHIN]
            return dict.fromkeys(keys, math.nan)
        cumulative = self._state["hist"].cpu().cumsum(0)
        # Median of n values: mean of the (n+1)//2-th and (n//2+1)-th smallest (1-based).
        ranks = torch.tensor([(count + 1) // 2, count // 2 + 1], dtype=cumulative.dtype)
        bins = torch.searchsorted(cumulative, ranks).to(torch.float64)
        median = float(((bins + 0.5) * NORMALS_BIN_WIDTH).mean())
        out = {
            "mean": float(self._state["angle_sum"]) / count,
            "median": median,
            "rms": math.sqrt(float(self._state["angle_sq_sum"]) / count),
        }
        within = self._state["within"].cpu().tolist()
        for th, n in zip(NORMALS_WITHIN, within, strict=True):
            out[_within_key(th)] = 100.0 * n / count
        return out


def _within_key(threshold: float) -> str:
    return "within_" + f"{threshold:g}".replace(".", "_")


class DepthMeter(Meter):
    """Depth ``rmse`` and ``abs_rel`` over the valid pixels (label > 0) of the split.

    ``pred`` is (N, 1, H, W), ``target`` (N, 1, H, W) or (N, H, W) in the same units. The
    prediction is used as is (no clamping to positive values).
    """

    def _new_state(self, device: torch.device) -> dict[str, Tensor]:
        return {
            "sq_sum": torch.zeros((), dtype=torch.float64, device=device),
            "abs_rel_sum": torch.zeros((), dtype=torch.float64, device=device),
            "count": torch.zeros((), dtype=torch.int64, device=device),
        }

    def _update(self, pred: Tensor, target: Tensor) -> None:
        target = single_channel_label(pred, target, "depth")
        pred, target = pred.float(), target.float()
        valid = target > 0
        safe_target = torch.where(valid, target, 1.0)
        err = (pred - safe_target).to(torch.float64)
        self._state["sq_sum"].add_(torch.where(valid, err * err, 0.0).sum())
        self._state["abs_rel_sum"].add_(torch.where(valid, err.abs() / safe_target, 0.0).sum())
        self._state["count"].add_(valid.sum())

    def compute(self) -> dict[str, float]:
        count = int(self._state["count"])
        if count == 0:
            return {"rmse": math.nan, "abs_rel": math.nan}
        return {
            "rmse": math.sqrt(float(self._state["sq_sum"]) / count),
            "abs_rel": float(self._state["abs_rel_sum"]) / count,
        }


def build_meter(task: str, num_outputs: int, device: torch.device | str | None = None) -> Meter:
    """The meter of ``task`` for a head with ``num_outputs`` channels."""
    task_spec(task)  # unknown task -> ValueError
    expected = FIXED_OUTPUTS.get(task)
    if expected is not None and num_outputs != expected:
        raise ValueError(f"task {task!r} has {expected} outputs, got num_outputs={num_outputs}")
    if task in ("semseg", "human_parts"):
        return SegmentationMeter(num_outputs, device=device)
    if task == "sal":
        return SaliencyMeter(device=device)
    if task == "normals":
        return NormalsMeter(device=device)
    if task == "depth":
        return DepthMeter(device=device)
    if task == "edge":
        return EdgeMeter(device=device)
    raise ValueError(f"no meter for task {task!r}")


class TaskMeters:
    """One meter per task; ``outputs`` and ``batch`` are keyed by task name."""

    def __init__(
        self, num_outputs: Mapping[str, int], device: torch.device | str | None = None
    ) -> None:
        self.meters: dict[str, Meter] = {
            task: build_meter(task, n, device=device) for task, n in num_outputs.items()
        }

    @property
    def tasks(self) -> list[str]:
        return list(self.meters)

    def __getitem__(self, task: str) -> Meter:
        return self.meters[task]

    def update(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> None:
        for task, meter in self.meters.items():
            if task not in outputs:
                raise KeyError(f"model outputs have no prediction for task {task!r}")
            if task not in batch:
                raise KeyError(f"batch has no label for task {task!r}")
            meter.update(outputs[task], batch[task])

    def compute(self) -> dict[str, dict[str, float]]:
        return {task: meter.compute() for task, meter in self.meters.items()}

    def state_tensors(self) -> list[Tensor]:
        """The live state of every meter, concatenated in task order (see Meter.state_tensors)."""
        return [t for meter in self.meters.values() for t in meter.state_tensors()]

    def reset(self) -> None:
        for meter in self.meters.values():
            meter.reset()

    def all_reduce_(self, group=None) -> TaskMeters:
        for meter in self.meters.values():
            meter.all_reduce_(group)
        return self


def delta_m(
    metrics: Mapping[str, Mapping[str, float]],
    reference: Mapping[str, Mapping[str, float]],
    tasks: Sequence[str] | None = None,
) -> float:
    """Multi-task score of Maninis et al. (2019), in percent.

    ``Δm = 100 / T * sum_t s_t * (M_t - R_t) / R_t`` over each task's primary metric
    (``benchmark.tasks``), with ``s_t = +1`` when higher is better and ``-1`` otherwise. Both
    arguments are nested ``{task: {metric: value}}`` dicts; ``reference`` is usually the
    single-task baseline.

    ``tasks`` defaults to the tasks of ``reference`` that ``metrics`` also has, in the
    reference's order, so a method trained on a subset of the reference's tasks is scored on
    that subset; pass ``tasks`` explicitly to insist on a fixed task set. Raises ``ValueError``
    naming the task when a requested task or its primary metric is missing from either side
    or when a reference value is zero, and when no task is shared. A NaN metric (a diverged
    run) gives a NaN score.
    """
    if tasks is None:
        tasks = [task for task in reference if task in metrics]
        if not tasks:
            raise ValueError("metrics and reference share no task")
    elif not tasks:
        raise ValueError("tasks must not be empty")
    total = 0.0
    for task in tasks:
        spec = task_spec(task)
        values = []
        for name, source in (("metrics", metrics), ("reference", reference)):
            try:
                values.append(float(source[task][spec.primary]))
            except KeyError:
                raise ValueError(
                    f"{name} lack the primary metric {spec.primary_key!r} of task {task!r}"
                ) from None
        value, ref = values
        if ref == 0:
            raise ValueError(f"reference {spec.primary_key} of task {task!r} is 0")
        sign = 1.0 if spec.higher_is_better else -1.0
        total += sign * (value - ref) / ref
    return 100.0 * total / len(tasks)
