"""Houlsby adapters shared by the tasks (Houlsby et al.: "Parameter-Efficient Transfer
Learning for NLP", ICML 2019), the `adapter` row of protocol §3.2 (Polyhistor's and MTLoRA's
"Adapter" baseline).

One frozen Swin encoder shared by every task (`shared` mode). Every block gets two bottleneck
adapters, `x + up(gelu(down(x)))`, one on the attention output and one on the MLP output,
each before the block's stochastic depth and residual addition (the placement and its
reasons: `methods.blocks.bottleneck`). The bottleneck of a block of width d is d // `reduction`.
Both projections start from a normal with std 1e-2 truncated at two stds, biases zero:
Houlsby's near-identity initialisation. GELU is our choice of non-linearity (the backbone's
own).

Trains: the adapters and every LayerNorm of the backbone (blocks, patch merging, patch
embedding), as Houlsby et al. train the layer norms with the adapters, plus the decoders
(the harness). Frozen: everything else (attention and MLP weights and biases, relative
position tables, patch embedding projection, merging reductions).

Count and default. A block of width d with bottleneck m costs 2 (2 d m + m + d). Swin-T's
twelve blocks (widths 2 x 96, 2 x 192, 6 x 384, 2 x 768) at `reduction` 1 cost 8,643,840;
the LayerNorms 23,232; with the decoders (1,946,624) 10,613,696 trainable against the
paper's 11.24 M. Reduction 1 (bottleneck = block width) is the largest integer setting,
so the default is the closest the suite's layout gets; reduction 2 gives 6,296,192. The
0.63 M left over is the offset the Polyhistor-paper rows share (protocol §3.2).
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmark.backbone import SwinBackbone
from benchmark.method import Encoder, Method
from methods.blocks.bottleneck import Adapter, bottleneck_width, insert_adapters
from methods.blocks.inject import freeze, unfreeze_norms
from methods.blocks.options import positive_ints


class HoulsbyAdapter(Method):
    paper_trainable_m = 11.24

    def __init__(self, reduction: int = 1, name: str | None = None):
        super().__init__(name or "adapter")
        (self.reduction,) = positive_ints(reduction=reduction)

    @property
    def label(self) -> str:
        return f"{self.name} reduction={self.reduction}"

    def build_encoder(self, backbone: SwinBackbone, tasks: Sequence[str]) -> Encoder:
        freeze(backbone)
        unfreeze_norms(backbone)

        def make(site):
            weight = backbone.stages[site.stage].blocks[site.block].norm1.weight
            bottleneck = bottleneck_width(site.dim, self.reduction)
            return Adapter(site.dim, bottleneck, device=weight.device, dtype=weight.dtype)

        insert_adapters(backbone, make)
        return Encoder(backbone, tasks)
