"""Meters of the geometric tasks: the angular error of surface normals and the depth
error."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.metrics.meter import Meter
from benchmark.tasks import check_normals, single_channel_label

NORMALS_WITHIN = (11.25, 22.5, 30.0)
NORMALS_BIN_WIDTH = 0.01  # degrees; the median is read from a histogram of this resolution
NORMALS_BINS = 18000  # 180 / 0.01


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
        check_normals(pred, target)
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
