"""Meters of the binary tasks: saliency (`sal`) and edges (`edge`), scored over thresholds of
the predicted probability."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from benchmark.metrics.meter import Meter, _safe_div, _suffix_sums
from benchmark.tasks import IGNORE_INDEX, single_channel_label

# Thresholds of the saliency and edge protocols. They are rebuilt on the meter's device from
# these recipes (no host-to-device copy during ``update``).
SAL_IOU_THRESHOLDS = (0.2, 0.9, 15)  # linspace(start, end, steps)
F_THRESHOLD_STEP, F_THRESHOLD_COUNT = 0.05, 19  # 0.05, 0.10, ..., 0.95
SAL_BETA2 = 0.3
EDGE_BETA2 = 1.0


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
