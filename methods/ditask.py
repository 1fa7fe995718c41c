"""DiTASK (Mantri et al.: "DiTASK: Multi-Task Fine-Tuning with Diffeomorphic Transformations",
CVPR 2025), as its official code behaves. Published on PASCAL-Context with Swin-T: semseg
69.66, human_parts 62.02, sal 65.00, normals 17.10, Δm +3.22 % at "1.61 M" trainable.

Each adapted frozen linear W (out x in) is re-synthesised from its singular value
decomposition W = U diag(s) V^T with warped singular values, W' = U diag(s') V^T, and the
layer returns W' dropout(x) + b: there is no additive update, and the frozen product W x
(which the official layer computes and discards) is not formed. s' = warp(s, theta) is a 1-D
CPAB diffeomorphism of the index axis of the sorted spectrum (`methods.cpab.warp_signal`):
the largest and the smallest singular value stay, the order is kept. A qkv weight (3C x C)
is split into its q, k and v blocks, each decomposed and warped by the same theta.

Structure (MTLoRA's, `methods.mtlora`; task streams, protocol §2.3):

- Shared warp: in every block, qkv, proj, fc1 and fc2 each have their own theta of
  `tessellation` - 1 values (64 cells: 63).
- Task warps: proj, fc1 and fc2 of the last block of each stage have, per task, a theta of
  `task_tessellation` - 1 values (4 cells: 3) applied to the *original* s (not composed with
  the shared warp); the task output is W'_t x_t + b, the whole layer with the task's weight on
  the task stream (no shared term, unlike MTLoRA), x_t the dropped-out shared input for
  proj. The streams flow as in MTLoRA's `TaskStreamBlock`.
- The official code also gives every qkv task warps; the attention never reads them. They
  are kept (structure and count as released) but not computed: they never get a gradient.
  The shared warps of proj, fc1, fc2 in the very last block act on the last stage's shared
  stream, which reaches no decoder: no gradient either, as in the official code.
- theta is Kaiming-uniform (a = sqrt(5)) on a (1, d) tensor, U(-1/sqrt(d), 1/sqrt(d)): the
  warp is not the identity at the start (theta = 0 would be). Being 2-D, theta is decayed.

Trains: every theta, LayerNorms, the patch embedding, the relative-position tables, the
patch-merging reductions (fully), the decoders. Frozen: qkv, proj, fc1, fc2 weights and biases.
For Swin-T on the four PASCAL tasks: 3,549,482 trainable (1,602,858 without the decoders; the
reductions are 1,548,288 of it, the thetas 3,312). The paper's 1.61 M excludes the decoders
and equals, to the last digit, `task_tessellation=64`: 1,608,618 without the decoders
(3,555,242 with them). The default follows the released configuration (4 cells per task),
the code that produced the published numbers as far as can be known.

Faster, same numbers: the official layer recomputes the SVD of each frozen weight block on
every forward pass, for the shared warp and again for every task. The weight is frozen, so
`cache_svd` (default true) computes it once per device, dtype and weight version and reuses
it; `cache_svd=false` recomputes it on every forward pass as the official code does, once
for the shared weight and once for all task weights together (the official code: once per
task), so the measured gain of the cache is a lower bound. The outputs agree to float
rounding. The task warps of one layer are integrated together, as one batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.backbone import SwinBackbone
from benchmark.model import Encoder
from methods.base import Method, freeze, positive_ints, unfreeze_norms
from methods.cpab import warp_signal
from methods.lowrank import FrozenLinearWrapper, _dropout, _frozen, inject
from methods.mtlora import TS_TARGETS, TaskStreamBlock


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
        self.base = _frozen(base)
        self.theta = cpab_theta(cells, base.weight)
        self.task_theta = nn.ParameterDict({t: cpab_theta(task_cells, base.weight) for t in tasks})
        self.dropout = _dropout(dropout)
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


class DiTASK(Method):
    # The paper's 1.61 M excludes the decoders, which the suite's counts include: none here.
    paper_trainable_m = None

    def __init__(
        self,
        name: str = "ditask",
        tessellation: int = 64,
        task_tessellation: int = 4,
        dropout: float = 0.05,
        cache_svd: bool = True,
    ):
        super().__init__(name)
        cells, task_cells = positive_ints(
            tessellation=tessellation, task_tessellation=task_tessellation
        )
        if cells < 2 or task_cells < 2:
            raise ValueError("tessellation and task_tessellation need at least 2 cells")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not isinstance(cache_svd, bool):
            raise ValueError(f"cache_svd must be true or false, got {cache_svd!r}")
        self.cells, self.task_cells = cells, task_cells
        self.dropout, self.cache_svd = float(dropout), cache_svd

    @property
    def label(self) -> str:
        suffix = "" if self.task_cells == 4 else f" task_nc={self.task_cells}"
        return f"ditask nc={self.cells}{suffix}"

    def options(self) -> dict:
        return {"tessellation": self.cells, "task_tessellation": self.task_cells,
                "dropout": self.dropout, "cache_svd": self.cache_svd}

    def build_encoder(self, backbone: SwinBackbone, tasks: Sequence[str]) -> Encoder:
        freeze(backbone)
        backbone.patch_embed.requires_grad_(True)
        unfreeze_norms(backbone)

        def layer(kind: type[DiTASKLinear], layer_tasks: Sequence[str]):
            return lambda linear: kind(linear, self.cells, layer_tasks, self.task_cells,
                                       self.dropout, self.cache_svd)

        for stage in backbone.stages:
            for i, block in enumerate(stage.blocks):
                block.attn.relative_position_bias_table.requires_grad_(True)
                inject(block, ["attn.qkv"], layer(DiTASKLinear, tasks))  # task warps unused
                last = i == len(stage.blocks) - 1
                inject(block, TS_TARGETS, layer(MultiTaskDiTASKLinear if last else DiTASKLinear,
                                                tasks if last else ()))
            stage.blocks[-1] = DiTASKBlock(stage.blocks[-1])
            if not isinstance(stage.merge, nn.Identity):
                stage.merge.reduction.requires_grad_(True)
        return Encoder(backbone, tasks, mode="task_streams")
