"""VL-Adapter (Sung et al.: "VL-Adapter: Parameter-Efficient Transfer Learning for
Vision-and-Language Tasks", CVPR 2022), the `vl_adapter` row of protocol §3.2.

VL-Adapter compares, in one multi-task model, "multiple adapters" (a set per task),
"half-shared" ones and a "single adapter": one set of bottleneck adapters shared by all
tasks, after the attention and the feed-forward sub-layers of every layer, trained with the
layer norms; the single adapter is its recommended setting, and what this method
implements: one frozen Swin encoder (`shared` mode), in every block an adapter after
attention and one after the MLP, the same for every task.

How it differs from `adapter` here. Structurally it is the same module at the same place:
Houlsby's bottleneck `x + up(gelu(down(x)))`, put before each drop-path of the block
(`methods.blocks.bottleneck`), initialised near the identity (std 1e-2), with every LayerNorm
trained; VL-Adapter's point, sharing one set across the tasks, is already how protocol §3.2
defines the `adapter` baseline. What differs is the bottleneck, and it is what the two
published rows (11.24 M against 4.74 M) can only differ by: `vl_adapter` defaults to
`reduction` 3 (bottlenecks 32, 64, 128, 256 for Swin-T's stages), `adapter` to 1.

Trains: the adapters and every LayerNorm (blocks, patch merging, patch embedding), plus
the decoders (the harness). Frozen: everything else.

Count and default. A block of width d with bottleneck m = d // `reduction` costs
2 (2 d m + m + d); the LayerNorms 23,232; the decoders 1,946,624. For Swin-T:

| reduction | trainable | vs 4.74 M |
|---|---|---|
| 2 | 6,296,192 | +1.56 M |
| 3 | 4,857,024 | +0.12 M |
| 4 | 4,137,440 | -0.60 M |
| 8 (VL-Adapter's released scripts) | 3,058,064 | -1.68 M |

Reduction 3 is the closest integer setting (2.5 % above the paper). Reduction 4 falls short
by 0.60 M, the offset the Polyhistor-paper rows share (protocol §3.2): if that offset is
outside the method, the paper's VL-Adapter ran at a bottleneck of d / 4.
"""

from __future__ import annotations

from methods.adapter import HoulsbyAdapter


class VLAdapter(HoulsbyAdapter):
    paper_trainable_m = 4.74

    def __init__(self, reduction: int = 3, name: str | None = None):
        super().__init__(reduction, name or "vl_adapter")
