"""DiTASK's layers (`methods.ditask` says what they compute and why): a frozen linear
re-synthesised from its singular value decomposition with warped singular values
(`DiTASKLinear`), its multi-task form with per-task warps (`MultiTaskDiTASKLinear`), and
MTLoRA's task-stream block running them (`DiTASKBlock`). The warp is `methods.blocks.cpab`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.blocks.cpab import warp_signal
from methods.blocks.inject import FrozenLinearWrapper, dropout_module, frozen_linear
from methods.blocks.task_streams import TaskStreamBlock


def cpab_theta(cells: int, like: Tensor) -> nn.Parameter:
    """The (1, cells - 1) parameters of a warp, initialised as the official code does."""
    theta = nn.Parameter(torch.empty(1, cells - 1, device=like.device, dtype=like.dtype))
    nn.init.kaiming_uniform_(theta, a=math.sqrt(5))
    return theta


class DiTASKLinear(FrozenLinearWrapper):
    """`y = U diag(warp(s, theta)) V^T dropout(x) + b` for frozen W = U diag(s) V^T and b.

    `tasks` gives it per-task thetas that its forward does not use (the official qkv's).
    """

    def __init__(
        self,
        base: nn.Linear,
        cells: int = 64,
        tasks: Iterable[str] = (),
        task_cells: int = 4,
        dropout: float = 0.0,
        cache_svd: bool = True,
    ):
        super().__init__()
        self.base = frozen_linear(base)
        self.theta = cpab_theta(cells, base.weight)
        self.task_theta = nn.ParameterDict({t: cpab_theta(task_cells, base.weight) for t in tasks})
        self.dropout = dropout_module(dropout)
        self.cache_svd = cache_svd
        self._svd: tuple[tuple, list[tuple[Tensor, Tensor, Tensor]]] | None = None

    @property
    def tasks(self) -> list[str]:
        return list(self.task_theta)

    @torch.no_grad()
    def spectrum(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """(U, s, V^T) of each row block of W (q, k, v for a qkv weight, else W itself)."""
        w = self.base.weight
        stamp = (w.device, w.dtype, w.data_ptr(), w._version)
        if self.cache_svd and self._svd is not None and self._svd[0] == stamp:
            return self._svd[1]
        m, n = w.shape
        parts = m // n if m in (2 * n, 3 * n) else 1
        exact = w if w.dtype in (torch.float32, torch.float64) else w.float()
        with torch.autocast(w.device.type, enabled=False):
            factors = [torch.linalg.svd(b, full_matrices=False) for b in exact.chunk(parts)]
        factors = [(u.to(w.dtype), s, vh.to(w.dtype)) for u, s, vh in factors]
        self._svd = (stamp, factors) if self.cache_svd else None
        return factors

    def weight(self, theta: Tensor) -> Tensor:
        """W' = U diag(warp(s, theta)) V^T, block by block, for each of the (b, d) thetas:
        (b, out_features, in_features)."""
        blocks = [
            (u * warp_signal(s, theta).to(u.dtype).unsqueeze(-2)) @ vh
            for u, s, vh in self.spectrum()
        ]
        return torch.cat(blocks, dim=-2)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.dropout(x), self.weight(self.theta)[0], self.base.bias)


class MultiTaskDiTASKLinear(DiTASKLinear):
    """The shared output W'(theta) dropout(x) + b and, per task, W'(theta_t) x_t + b with
    x_t = dropout(x) when no task input is given; returns `(shared, {task: output})`."""

    def forward(
        self, x: Tensor, task_inputs: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        dropped, bias = self.dropout(x), self.base.bias
        shared = F.linear(dropped, self.weight(self.theta)[0], bias)
        weights = self.weight(torch.cat(list(self.task_theta.values())))  # all tasks at once
        tasks = {
            t: F.linear(dropped if task_inputs is None else task_inputs[t], w, bias)
            for t, w in zip(self.task_theta, weights)
        }
        return shared, tasks


class DiTASKBlock(TaskStreamBlock):
    """MTLoRA's task-stream block running DiTASK's multi-task layers."""

    layer_types = (MultiTaskDiTASKLinear,)
