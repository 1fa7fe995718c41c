"""Low-rank building blocks shared by the LoRA family of methods.

- `LowRank`: a scaled rank-r update `s * B A` of a linear map (LoRA, Hu et al., ICLR 2022):
  A initialised Kaiming-uniform with a = sqrt(5) (the default of `nn.Linear`), B zeros, so
  the update starts at exactly zero and the adapted network starts as the pre-trained one.
- `LoRALinear`: a frozen `nn.Linear` plus one `LowRank` update on the dropped-out input;
  its update can be merged into the frozen weight for inference.
- `MultiTaskLoRALinear`: MTLoRA's linear (Agiza et al., CVPR 2024; protocol §3.1): one frozen
  product on the shared stream, a task-agnostic update for the shared output and one
  task-specific update per task.
- `DoRALinear`, `MultiTaskDoRALinear`: the weight-decomposed variants of the two layers
  above (DoRA, Liu et al., ICML 2024): a trainable magnitude per output feature times the
  low-rank-updated weight normalised per output feature.

The wrapped linear is kept whole as `.base` and frozen (`methods.blocks.inject` places the
layers); only the low-rank factors are new parameters. They are created on the base
weight's device and dtype, so injecting into a backbone built on the meta device costs no
memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.blocks.inject import FrozenLinearWrapper, dropout_module, frozen_linear


class LowRank(nn.Module):
    """`x -> scale * B A x` with A: (rank, in_features) and B: (out_features, rank)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        scale: float,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if rank < 1:
            raise ValueError(f"a low-rank update needs rank >= 1, got {rank}")
        self.rank = rank
        self.scale = float(scale)
        self.a = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.b = nn.Parameter(torch.empty(out_features, rank, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # A as nn.Linear initialises its weight, B zero: the update starts at exactly zero.
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        nn.init.zeros_(self.b)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.a), self.b) * self.scale

    def delta_weight(self) -> Tensor:
        """The update as a dense (out_features, in_features) matrix."""
        return (self.b @ self.a) * self.scale

    def extra_repr(self) -> str:
        out_features, in_features = self.b.shape[0], self.a.shape[1]
        return f"{in_features} -> {self.rank} -> {out_features}, scale={self.scale:g}"


class LoRALinear(FrozenLinearWrapper):
    """`y = W x + b + scale * B A dropout(x)` with W and b frozen (Hu et al., Sec. 4.1).

    `merge()` adds the update to W and turns the low-rank path off, so the layer costs what
    the plain linear costs; `unmerge()` undoes it. Training a merged layer is meaningless
    (its update no longer reaches the output), so merge for inference only.
    """

    def __init__(self, base: nn.Linear, rank: int, scale: float = 1.0, dropout: float = 0.0):
        super().__init__()
        self.base = frozen_linear(base)
        w = base.weight
        self.lora = LowRank(
            base.in_features, base.out_features, rank, scale, device=w.device, dtype=w.dtype
        )
        self.dropout = dropout_module(dropout)
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + self.lora(self.dropout(x))

    def delta_weight(self) -> Tensor:
        return self.lora.delta_weight()

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight.add_(self.delta_weight().to(self.base.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight.sub_(self.delta_weight().to(self.base.weight.dtype))
            self.merged = False


class MultiTaskLoRALinear(FrozenLinearWrapper):
    """MTLoRA's multi-task low-rank linear (protocol §3.1).

    With frozen W, b, shared-stream input x and optional task inputs x_t:

        shared output  = W x + b + scale * B_sh A_sh dropout(x)
        task output t  = W x + b + task_scale * B_t A_t x_t,  x_t = dropout(x) when not given

    The frozen product is computed once, on the shared stream, and a task output does not
    contain the shared update; one dropout mask serves the shared update and every task
    update that reads the shared input. `forward` returns `(shared, {task: output})`.

    There is no `merge`: folding the shared update into W would add it to every task output
    too, which the definition above excludes.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        tasks: Iterable[str],
        task_rank: int,
        scale: float = 4.0,
        task_scale: float | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.base = frozen_linear(base)
        w = base.weight
        dims = (base.in_features, base.out_features)
        self.shared = LowRank(*dims, rank, scale, device=w.device, dtype=w.dtype)
        task_scale = scale if task_scale is None else task_scale
        self.task_lora = nn.ModuleDict(
            {t: LowRank(*dims, task_rank, task_scale, device=w.device, dtype=w.dtype)
             for t in tasks}
        )
        self.dropout = dropout_module(dropout)

    @property
    def tasks(self) -> list[str]:
        return list(self.task_lora)

    def forward(
        self, x: Tensor, task_inputs: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        frozen = self.base(x)
        dropped = self.dropout(x)
        shared = frozen + self.shared(dropped)
        tasks = {
            t: frozen + lora(dropped if task_inputs is None else task_inputs[t])
            for t, lora in self.task_lora.items()
        }
        return shared, tasks


def lora_layers(module: nn.Module) -> list[LoRALinear]:
    return [m for m in module.modules() if isinstance(m, LoRALinear)]


def merge_lora(module: nn.Module) -> int:
    """Merge every `LoRALinear` inside `module` into its frozen weight; returns how many."""
    layers = lora_layers(module)
    for layer in layers:
        layer.merge()
    return len(layers)


# --- DoRA: weight-decomposed low-rank adaptation ---------------------------------------


def row_norm(weight: Tensor) -> Tensor:
    """The L2 norm of each output feature's weights: (out_features, in_features) -> (out,).

    DoRA's column-wise norm ||.||_c (Liu et al., Eq. 2): the paper's magnitude m has one
    entry per output feature, each column of its W holding one output's weights. In
    PyTorch's (out, in) layout that is one norm per row of `weight`, as in the authors' code.
    """
    return torch.linalg.vector_norm(weight, dim=1)


class DoRALinear(LoRALinear):
    """DoRA's linear layer (Liu et al., ICML 2024, Eq. 5), with W and b frozen:

        y = m / ||W + s B A||  *  (W x + s B A dropout(x))  +  b

    where m (out_features,) is trainable and initialised to ||W|| and the norm is taken per
    output feature (`row_norm`). With B = 0 the ratio is exactly one and the layer is the
    frozen one. The norm is detached from the graph, as the paper recommends (Sec. 4.3:
    treated as a constant, which saves the memory of its backward); the magnitude and the
    low-rank factors still receive their full gradients through the output. The bias is
    not rescaled (it is not part of the decomposed weight).

    `delta_weight()` is the dense change of the weight, m / ||V|| * V - W with V = W + s B A,
    so that W + delta_weight() is the effective weight; `merge()` writes it into W (and keeps
    the per-feature ratio, m / ||V||, to undo it exactly).

    `dropout_style` says what the dropout acts on while training (they agree in eval mode,
    or without dropout). With r = m / ||V|| and x~ = dropout(x):

    - `update` (the default of this layer): y = r (W x + s B A x~) + b, dropout on the
      low-rank input only, as in `LoRALinear`;
    - `peft`: y = W x + b + (r - 1) W x~ + r s B A x~, as HF peft and the DoRA authors'
      code compute it: the frozen output W x + b is kept whole and the rescaling's share of
      the frozen path, (r - 1) W, reads the dropped input like the update (one more product
      with W per training step).
    """

    DROPOUT_STYLES = ("update", "peft")

    def __init__(self, base: nn.Linear, rank: int, scale: float = 1.0, dropout: float = 0.0,
                 dropout_style: str = "update"):
        super().__init__(base, rank, scale, dropout)
        if dropout_style not in self.DROPOUT_STYLES:
            raise ValueError(
                f"dropout_style must be one of {', '.join(self.DROPOUT_STYLES)}, "
                f"got {dropout_style!r}"
            )
        self.dropout_style = dropout_style
        self.magnitude = nn.Parameter(row_norm(base.weight.detach()).clone())
        self._merge_ratio: Tensor | None = None

    def ratio(self, direction: Tensor | None = None) -> Tensor:
        """m / ||W + s B A|| per output feature. The norm is a constant (computed without
        autograd); `direction` is W + s B A when the caller has already formed it."""
        with torch.no_grad():
            if direction is None:
                direction = self.base.weight + self.lora.delta_weight()
            norm = row_norm(direction)
        return self.magnitude / norm

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base(x)
        if self.dropout_style == "peft" and self.training and isinstance(self.dropout, nn.Dropout):
            dropped = self.dropout(x)
            ratio = self.ratio()
            return self.base(x) + (
                (ratio - 1) * F.linear(dropped, self.base.weight) + ratio * self.lora(dropped)
            )
        y = (F.linear(x, self.base.weight) + self.lora(self.dropout(x))) * self.ratio()
        return y if self.base.bias is None else y + self.base.bias

    def delta_weight(self) -> Tensor:
        weight = self.base.weight
        direction = weight + self.lora.delta_weight()
        return self.ratio(direction).unsqueeze(1) * direction - weight

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            weight = self.base.weight
            direction = weight + self.lora.delta_weight()
            ratio = self.ratio(direction)
            merged = ratio.unsqueeze(1) * direction
            weight.copy_(merged.to(weight.dtype))
            self._merge_ratio = ratio
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            weight = self.base.weight
            original = weight / self._merge_ratio.unsqueeze(1) - self.lora.delta_weight()
            weight.copy_(original.to(weight.dtype))
            self._merge_ratio = None
            self.merged = False


class MultiTaskDoRALinear(MultiTaskLoRALinear):
    """MTLoRA's multi-task linear with DoRA's decomposition (`mtlora dora=true`).

    One trainable magnitude m per output feature (initialised to ||W||) is shared by the
    shared output and every task output; each output normalises its *own* direction:

        shared output = m / ||W + s B_sh A_sh||  *  (W x + s B_sh A_sh dropout(x))  +  b
        task output t = m / ||W + s_t B_t A_t||  *  (W x + s_t B_t A_t x_t)  +  b

    so that, as in MTLoRA, a task output does not contain the shared update, and with every
    B zero all outputs are the frozen layer's. This combination is ours (no paper reports
    DoRA inside MTLoRA): one magnitude per layer keeps the added cost that of the shared
    layers, and the tasks adapt only their directions. Norms are detached as in `DoRALinear`.
    """

    def __init__(self, base: nn.Linear, *args, **kwargs):
        """The arguments of `MultiTaskLoRALinear`."""
        super().__init__(base, *args, **kwargs)
        self.magnitude = nn.Parameter(row_norm(base.weight.detach()).clone())

    def ratio(self, update: LowRank) -> Tensor:
        """m / ||W + s B A|| per output feature for `update`, the norm a constant."""
        with torch.no_grad():
            norm = row_norm(self.base.weight + update.delta_weight())
        return self.magnitude / norm

    def forward(
        self, x: Tensor, task_inputs: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        frozen = F.linear(x, self.base.weight)
        dropped = self.dropout(x)
        bias = self.base.bias

        def output(update: LowRank, inputs: Tensor) -> Tensor:
            y = (frozen + update(inputs)) * self.ratio(update)
            return y if bias is None else y + bias

        shared = output(self.shared, dropped)
        tasks = {
            t: output(lora, dropped if task_inputs is None else task_inputs[t])
            for t, lora in self.task_lora.items()
        }
        return shared, tasks
