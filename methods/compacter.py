"""Compacter and Compacter++ (Mahabadi et al.: "Compacter: Efficient Low-Rank Hypercomplex
Adapter Layers", NeurIPS 2021), the `compacter` and `compacter_pp` rows of SPEC 3.2.

One frozen Swin encoder shared by every task (`shared` mode) with bottleneck adapters,
`x + up(gelu(down(x)))`, whose two projections are low-rank parameterised hypercomplex
multiplication (PHM) layers (`methods.adapters.PHMLinear`): each (in x out) matrix is
`W = sum_{i=1..n} kron(A_i, s_i t_i^T)`, with n = `phm_dim`. The n "slow" matrices A_i
(n x n) are one set shared by every PHM layer of the network (down and up projections of
every adapter, every stage: they do not depend on the width, so Swin's changing widths need
nothing special); the "fast" rank-one factors s_i (in / n), t_i (out / n) and the bias are
per layer. The bottleneck of a block of width d is d // `reduction`; n must divide both.

- `compacter`: two adapters per block, after attention and after the MLP, before the
  block's stochastic depth and residual addition (Houlsby's placement, as `adapter`; see
  `methods.adapters`).
- `compacter_pp` (Compacter++): one adapter per block, after the MLP only.

Trains: the adapters (shared A_i, fast factors, biases) and every LayerNorm of the backbone
(blocks, patch merging, patch embedding), as Compacter trains the layer norms with its
adapters, plus the decoders (the harness). Frozen: everything else (attention and MLP
weights and biases, relative-position tables, patch embedding projection, merging
reductions). Initialisation: A_i entries N(0, 1/n), fast factors N(0, 0.1^2), biases zero,
so that every W starts with entries of std 1e-2 (the `adapter` baseline's near-identity
scale) and every parameter gets a gradient. GELU is the backbone's own non-linearity.

Count and default. A PHM layer in -> out costs in + out + out (bias), so an adapter of
width d and bottleneck m costs 3 (d + m), and the shared A_i n^3. With `reduction` 1
(m = d) a Swin-T block costs 6 d per adapter; the block widths sum to 4,416 (2 x 96,
2 x 192, 6 x 384, 2 x 768), the LayerNorms 23,232, the decoders 1,946,624:

- `compacter`: 52,992 + 64 + 23,232 + 1,946,624 = 2,022,912 trainable (paper 2.78 M);
- `compacter_pp`: 26,496 + 64 + 23,232 + 1,946,624 = 1,996,416 trainable (paper 2.66 M).

Reduction 1 is the largest bottleneck, hence the closest count; any larger reduction only
lowers it (by 3 m per adapter), and n only enters as n^3 (64 at the default n = 4, within
the paper's range and the default of the VL-Adapter code that benchmarked Compacter; 1,728
at n = 12). Rank-one PHM
adapters are simply this cheap: no setting of the paper's method reaches its published
counts. The gaps (0.76 M and 0.66 M) are, like those of `vpt_*` and `adapter` (0.60 M,
0.63 M), mostly the larger non-method part of the paper's models; their difference
(0.12 M for the attention-side adapters) is more than any rank-one adapter set of Swin-T
costs (26,496 parameters here), which suggests that the paper's PHM layers were not
rank-one or not shared.
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmark.backbone import SwinBackbone
from benchmark.model import Encoder
from methods.adapters import (
    POSITIONS,
    PHMAdapter,
    bottleneck_width,
    insert_adapters_at,
    phm_rule,
)
from methods.base import Method, freeze, positive_ints, unfreeze_norms


class Compacter(Method):
    """PHM adapters after attention and after the MLP of every block (see the module)."""

    paper_trainable_m = 2.78
    positions: tuple[str, ...] = POSITIONS

    def __init__(self, phm_dim: int = 4, reduction: int = 1, name: str | None = None):
        super().__init__(name or "compacter")
        self.phm_dim, self.reduction = positive_ints(phm_dim=phm_dim, reduction=reduction)

    @property
    def label(self) -> str:
        return f"{self.name} n={self.phm_dim} reduction={self.reduction}"

    def options(self) -> dict:
        return {"phm_dim": self.phm_dim, "reduction": self.reduction,
                "positions": list(self.positions)}

    def build_encoder(self, backbone: SwinBackbone, tasks: Sequence[str]) -> Encoder:
        freeze(backbone)
        unfreeze_norms(backbone)
        weight = backbone.patch_embed.proj.weight
        rule = phm_rule(self.phm_dim, device=weight.device, dtype=weight.dtype)

        def make(site):
            bottleneck = bottleneck_width(site.dim, self.reduction)
            if bottleneck % self.phm_dim or site.dim % self.phm_dim:
                raise ValueError(
                    f"phm_dim {self.phm_dim} must divide the block width {site.dim} and the "
                    f"bottleneck {bottleneck} (reduction {self.reduction})"
                )
            return PHMAdapter(site.dim, bottleneck, rule)

        insert_adapters_at(backbone, make, self.positions)
        return Encoder(backbone, tasks)


class CompacterPlusPlus(Compacter):
    """Compacter++: one PHM adapter per block, after the MLP only."""

    paper_trainable_m = 2.66
    positions = ("mlp",)

    def __init__(self, phm_dim: int = 4, reduction: int = 1, name: str | None = None):
        super().__init__(phm_dim, reduction, name or "compacter_pp")
