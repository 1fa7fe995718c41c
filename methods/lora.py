"""LoRA shared by all tasks (Hu et al.: "LoRA: Low-Rank Adaptation of Large Language
Models", ICLR 2022), the `lora` baseline of protocol §3.2 and of MTLoRA's Table 1.

One frozen Swin encoder shared by every task; each targeted linear of every block becomes
`W x + b + s * B A dropout(x)` (`methods.blocks.lowrank.LoRALinear`): A Kaiming-uniform
(a = sqrt(5)), B zero, so training starts from the pre-trained network.

Trains: the LoRA factors A and B, plus the decoders (the harness). Frozen: everything else
in the backbone, LayerNorms, relative-position tables, patch embedding and merging
included: Hu et al. train the low-rank factors only, and the count below needs nothing else.

Options and defaults:

- `targets`: the linears adapted, by name inside a block (`qkv`, `proj`, `fc1`, `fc2`;
  `reduction` for the patch merging). Default `[qkv, proj]`: the attention layers, as the
  baseline is described ("LoRA on the attention layers"), both projections of timm's fused
  qkv adapted by one rank-r pair.
- `rank`: default 35, chosen so that the trainable count is as close as the layer widths
  allow to the published 2.87 M, which states neither rank nor placement. For Swin-T a block
  of width C costs r (C + 3C) on qkv and r (C + C) on proj; the block widths sum to 4,416,
  so [qkv, proj] costs 26,496 r: at r = 35, 927,360 + 1,946,624 decoder parameters =
  2,873,984 trainable, 3,984 (0.14 %) above 2.87 M. The next candidates are further away:
  r = 34 gives 2,847,488 (-22,512), r = 32 gives 2,794,496; qkv alone at r = 52 gives
  2,865,152 (-4,848). Neither set of layers reaches 2.87 M exactly (their steps are
  26,496 and 17,664 parameters per rank), and 2.87 M is itself rounded.
- `scale`: the fixed multiplier s, default 4.0, the value MTLoRA uses for its TA-LoRA
  (protocol §3.1), so that the two methods differ in structure rather than step size. `alpha`
  instead sets s = alpha / rank, Hu et al.'s parametrisation; give one or the other.
- `dropout`: on the LoRA input, default 0.05 (as MTLoRA).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from benchmark.backbone import SwinBackbone
from benchmark.method import Encoder, Method
from methods.blocks.inject import freeze, inject
from methods.blocks.lowrank import LoRALinear
from methods.blocks.options import dropout_rate, positive_ints

SWIN_LINEARS = ("qkv", "proj", "fc1", "fc2", "reduction")
DEFAULT_TARGETS = ("qkv", "proj")


class LoRA(Method):
    paper_trainable_m = 2.87
    #: the wrapper each targeted linear becomes, built as `layer(linear, rank, scale, dropout)`
    layer: type[LoRALinear] = LoRALinear

    def __init__(
        self,
        name: str = "lora",
        rank: int = 35,
        targets: Sequence[str] = DEFAULT_TARGETS,
        scale: float | None = None,
        alpha: float | None = None,
        dropout: float = 0.05,
    ):
        super().__init__(name)
        if isinstance(targets, str):
            targets = [targets]
        targets = [str(t) for t in targets]
        if not targets:
            raise ValueError("targets must name at least one linear")
        unknown = [t for t in targets if t.rpartition(".")[2] not in SWIN_LINEARS]
        if unknown:
            raise ValueError(f"unknown targets {unknown}; choose from {', '.join(SWIN_LINEARS)}")
        (rank,) = positive_ints(rank=rank)
        if scale is not None and alpha is not None:
            raise ValueError("give scale or alpha (scale = alpha / rank), not both")
        dropout = dropout_rate(dropout)
        self.rank = rank
        self.targets = targets
        self.alpha = None if alpha is None else float(alpha)
        self.scale = (
            self.alpha / self.rank if self.alpha is not None
            else 4.0 if scale is None else float(scale)
        )
        self.dropout = dropout

    @property
    def label(self) -> str:
        where = "" if tuple(self.targets) == DEFAULT_TARGETS else " " + "+".join(self.targets)
        return f"lora r={self.rank}{where}"

    def build_encoder(self, backbone: SwinBackbone, tasks: Sequence[str]) -> Encoder:
        freeze(backbone)

        def lora(linear: nn.Linear) -> LoRALinear:
            return self.layer(linear, self.rank, self.scale, self.dropout)

        inject(backbone, self.targets, lora)
        return Encoder(backbone, tasks)
