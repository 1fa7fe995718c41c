"""Compacter and Compacter++ (Mahabadi et al.: "Compacter: Efficient Low-Rank Hypercomplex
Adapter Layers", NeurIPS 2021), the `compacter` and `compacter_pp` rows of protocol §3.2, built
as the official code's released configurations build them.

One frozen Swin encoder shared by every task (`shared` mode) with bottleneck adapters,
`x + up(gelu(down(x)))`, whose two projections are low-rank parameterised hypercomplex
multiplication (PHM) layers (`methods.blocks.phm.PHMLinear`): each (in x out) matrix is
`W = sum_{i=1..n} kron(A_i, s_i t_i^T)`, with n = `phm_dim`. The n "slow" matrices A_i
(n x n) are one tensor shared by every PHM layer of the network, as the official code
injects one rule into every layer (down and up projections of every adapter, every stage:
it does not depend on the width, so Swin's changing widths need nothing special); the
"fast" rank-one factors s_i (in / n), t_i (out / n) and the bias are per layer. GELU is the
tanh approximation (`gelu_new`, the configurations' activation). There is no LayerNorm in
the adapter and no dropout (the released configurations turn both off).

- `compacter`: two adapters per block, after attention and after the MLP, on the
  sub-layer's output before the block's stochastic depth and residual addition (the
  official placement, Houlsby's; see `methods.blocks.bottleneck`).
- `compacter_pp` (Compacter++): one adapter per block, after the MLP only.

Multi-task: one adapter set (and one rule) serves the four tasks in one pass per image, our
choice; the official code trains one task at a time and has no guidance here.

Trains: the adapters (shared A_i, fast factors, biases) and every LayerNorm of the backbone
(blocks, patch merging, patch embedding), as the official `unfreeze_layer_norms` does, plus
the decoders (the harness). Frozen: everything else (attention and MLP weights and biases,
relative-position tables, patch embedding projection, merging reductions).

Initialisation, as the official code: A_i entries N(0, 1e-4^2), the fast factors
Xavier-uniform with gain sqrt(2) (each s_i as an (in / n) x 1 matrix, each t_i as 1 x
(out / n)), biases zero. Every PHM matrix starts at about zero (its entries have std of the
order of 1e-4), so the adapted network starts almost exactly as the frozen one, and every
parameter still gets a gradient (A through the fast factors, the factors through A).

Bottleneck. A block of width d has the bottleneck m = d // `reduction`, and n must divide
d and m (a PHM layer splits both sides into n blocks). The official configurations use
n = 4 and reduction 32, which leaves m = 3 in Swin-T's first stage: not valid. Our
default keeps n = 4 and takes reduction 8 (m = 12 / 24 / 48 / 96 on Swin-T), the largest
reduction up to the official 32 that is valid on every shipped backbone (swin_micro's
32-wide first stage needs m = 4); on Swin-T alone reduction 24 is valid too (m = 4 / 8 /
16 / 32), and n = 3 with reduction 32 keeps the official bottleneck. A reduction that
leaves some stage's bottleneck not divisible by n is refused before anything runs.

Count. A PHM layer in -> out costs in + out + out (bias), so an adapter of width d and
bottleneck m costs 3 (d + m), and the shared A n^3. For Swin-T (block widths summing to
4,416, bottlenecks to 552 at reduction 8) on PASCAL, with the LayerNorms (23,232) and the
decoders (1,946,624):

- `compacter`: 2 x 14,904 + 64 + 23,232 + 1,946,624 = 1,999,728 trainable (paper 2.78 M);
- `compacter_pp`: 14,904 + 64 + 23,232 + 1,946,624 = 1,984,824 trainable (paper 2.66 M).

No setting of the official structure reaches the paper's counts: even reduction 1 (m = d)
gives 2,022,912 / 1,996,416, and four task-specific sets with their own LayerNorms would
stay near 2.25 M. We keep the official structure and report the gap (see protocol §3.2 on
the Polyhistor-paper counts).
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmark.backbone import SwinBackbone
from benchmark.method import Encoder, Method
from methods.blocks.bottleneck import POSITIONS, bottleneck_width, insert_adapters_at
from methods.blocks.inject import freeze, unfreeze_norms
from methods.blocks.options import positive_ints
from methods.blocks.phm import PHMAdapter, phm_rule


class Compacter(Method):
    """PHM adapters after attention and after the MLP of every block (see the module)."""

    paper_trainable_m = 2.78
    positions: tuple[str, ...] = POSITIONS

    def __init__(self, phm_dim: int = 4, reduction: int = 8, name: str | None = None):
        super().__init__(name or "compacter")
        self.phm_dim, self.reduction = positive_ints(phm_dim=phm_dim, reduction=reduction)

    @property
    def label(self) -> str:
        return f"{self.name} n={self.phm_dim} reduction={self.reduction}"

    def check_widths(self, widths: Sequence[int]) -> None:
        """A ValueError in one line unless n divides every stage width and bottleneck."""
        n, r = self.phm_dim, self.reduction
        for d in widths:
            m = bottleneck_width(d, r)
            if d % n or m % n:
                raise ValueError(
                    f"phm_dim {n} must divide every stage's width and bottleneck (width // "
                    f"reduction), but width {d} with reduction {r} gives bottleneck {m}; "
                    f"choose a reduction that leaves multiples of {n} (e.g. 8 with phm_dim 4)"
                )

    def build_encoder(self, backbone: SwinBackbone, tasks: Sequence[str]) -> Encoder:
        self.check_widths(sorted({block.dim for block in backbone.blocks()}))
        freeze(backbone)
        unfreeze_norms(backbone)
        weight = backbone.patch_embed.proj.weight
        rule = phm_rule(self.phm_dim, device=weight.device, dtype=weight.dtype)

        def make(site):
            return PHMAdapter(site.dim, bottleneck_width(site.dim, self.reduction), rule)

        insert_adapters_at(backbone, make, self.positions)
        return Encoder(backbone, tasks)


class CompacterPlusPlus(Compacter):
    """Compacter++: one PHM adapter per block, after the MLP only."""

    paper_trainable_m = 2.66
    positions = ("mlp",)

    def __init__(self, name: str | None = None, **options):
        super().__init__(name=name or "compacter_pp", **options)
