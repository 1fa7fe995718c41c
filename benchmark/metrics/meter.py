"""The base class of the streaming meters (`Meter`) and the arithmetic they share."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


def _suffix_sums(hist: Tensor) -> Tensor:
    """``out[..., b] = hist[..., b:].sum(-1)``."""
    return hist.flip(-1).cumsum(-1).flip(-1)


def _safe_div(num: Tensor, den: Tensor, empty: float) -> Tensor:
    """``num / den`` elementwise, ``empty`` where ``den`` is zero (float64)."""
    num, den = num.to(torch.float64), den.to(torch.float64)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, empty))



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
