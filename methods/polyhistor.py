"""Polyhistor and Polyhistor-Lite (Liu et al.: "Polyhistor: Parameter-Efficient Multi-Task
Adaptation for Dense Vision Tasks", NeurIPS 2022), the `polyhistor` and `polyhistor_lite`
rows of protocol §3.2.

No official code exists; this is our reading of the paper, and every choice it leaves open
is listed here.

Adapters. Every block of the frozen Swin gets two bottleneck adapters, after attention and
after the MLP (`methods.blocks.bottleneck.insert_adapters`, the placement of the `adapter`
baseline), `x + up(gelu(down(x)))` with down d x m, up m x d and m = d // `reduction`. Their
weights are task-specific and generated, so the encoder runs one pass per task (`per_task`,
protocol §2.3), batched across tasks: once per forward pass the hypernetworks emit every
task's weights of every adapter, and each adapter gathers its samples' weights by task id
(`methods.blocks.hypernet`: `HyperEncoder`, `TaskAdapter`).

Conditioning (both variants). A learned task embedding per task and a learned layer
embedding per adapter site (block and position: 24 sites for Swin-T), both of size
`embed_dim`, are concatenated and projected by one linear layer and a ReLU to a vector of
size `hidden` (HyperFormer's task projector, reduced to one layer). That vector is the input
of every hypernetwork; the layer embedding is what lets one hypernetwork serve many layers.

Decomposed hypernetworks (`polyhistor`). HyperFormer maps the conditioning vector to all
d * m entries of an adapter matrix with one large linear head. Polyhistor decomposes it: for
each adapter matrix (down and up) a *pair* of small linear hypernetworks emits its two
low-rank factors, left (d x r) and right (r x m), and the matrix is their product (rank
<= r = `rank`); a third linear head emits the bias. Our reading: Swin's stages differ in
width, so every stage has its own set of heads, shared by its blocks and by both positions
(the layer embedding tells them apart). A stage of width d therefore costs
(hidden + 1) (2r + 1) (d + m) parameters: it still grows with the width, linearly.

Layer-wise scaling kernels (`polyhistor_lite`). One set of heads, shared by all stages,
emits the factors of a small *template* kernel of the first stage's size, d0 x m0 (d0 = the
backbone's `embed_dim`, m0 = d0 // `reduction`). An adapter of width d = s d0 uses
W = kron(S, template) with a learned layer-wise scaling kernel S of shape s x s (one per
adapter matrix and site; s = 1, 2, 4, 8 for the four stages), so the hypernetworks no longer
grow with the stage width. S starts as the identity (the template applied to every group of
d0 channels); for a stage-1 site it is a learned 1 x 1 gain. Biases: the template's bias,
tiled s times (the paper describes the scaling of the weight kernels only). The Kronecker
product is applied as two small matmuls and an s x s mix (`TaskWeight.apply`), never
materialised.

Initialisation. Embeddings are standard normal; the heads are normal with stds chosen so
that, at the start, the generated left factors have variance 1/a and the right factors 1/r
(a generated matrix then has entry variance 1/in_features, as a fan-in initialisation); the
up-projection's right head is scaled by 1e-2 and the bias heads start at zero, so every
adapter starts near the identity (near-zero output) and every parameter gets a gradient.

Parametrisation. The projection and the heads are `methods.blocks.hypernet.ScaledLinear`:
the stored weight is divided by its fan-in in the forward pass (and drawn that much wider,
so the start is the one above). With plain linear layers both variants fell to constant
predictions; `ScaledLinear`'s docstring tells why and what was measured.

Trains: the embeddings, the projection, the hypernetwork heads (and, for Lite, the scaling
kernels), plus the decoders (the harness). Frozen: the whole backbone, LayerNorms included
(HyperFormer generates conditional LayerNorms; Polyhistor does not say it tunes norms).

Defaults. We could not recover the widths and ranks behind the paper's counts, so they
were chosen for the count: `reduction`, `rank` and `embed_dim` shared by both variants,
and `hidden`, the one width that does not scale with the backbone, fitted last. For Swin-T
(stage widths 96, 192, 384, 768; 24 sites), four PASCAL tasks and decoders 1,946,624:

- `polyhistor`: reduction 2, rank 16, embed_dim 128, hidden 97:
  embeddings (4 + 24) * 128 = 3,584; projection 2 * 128 * 97 + 97 = 24,929; heads
  98 * 33 * (144 + 288 + 576 + 1,152) = 6,985,440; with decoders 8,960,577 trainable
  (paper 8.96 M; hidden 96 or 98 would give 8,889,040 or 9,032,114).
- `polyhistor_lite`: reduction 2, rank 16, embed_dim 128, hidden 889: embeddings 3,584;
  projection 228,473; template heads 890 * 33 * 144 = 4,229,280; scaling kernels
  sum over sites of 2 s^2 = 936; with decoders 6,408,897 trainable (paper 6.41 M).

Lite needs the wider conditioning vector because its heads are small: with Polyhistor's
hidden 97 it would have 2,441,769 trainable parameters with decoders, while the paper's
Lite is only 2.55 M below Polyhistor, so most of its budget must sit in parts that do not
scale with the stage width.

`tasks_per_pass` bounds memory: with fewer tasks per pass the tasks are processed in chunks.
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmark.backbone import SwinBackbone
from methods.blocks.bottleneck import AdapterSite
from methods.blocks.factor_heads import DecomposedHyperNetworks, LiteHyperNetworks
from methods.blocks.hypernet import HyperNetworkMethod


class Polyhistor(HyperNetworkMethod):
    """Task-specific adapters from decomposed hypernetworks, one set of heads per stage."""

    paper_trainable_m = 8.96

    def __init__(
        self,
        reduction: int = 2,
        rank: int = 16,
        embed_dim: int = 128,
        hidden: int = 97,
        tasks_per_pass: int | None = None,
        name: str | None = None,
    ):
        super().__init__(name or "polyhistor", tasks_per_pass, reduction=reduction, rank=rank,
                         embed_dim=embed_dim, hidden=hidden)

    @property
    def label(self) -> str:
        return f"{self.name} rank={self.rank}"

    def build_generator(self, backbone: SwinBackbone, sites: Sequence[AdapterSite], num_tasks: int):
        return DecomposedHyperNetworks(
            num_tasks, sites, self.reduction, self.rank, self.embed_dim, self.hidden
        )


class PolyhistorLite(Polyhistor):
    """Polyhistor with one template kernel shared by all stages and layer-wise scaling."""

    paper_trainable_m = 6.41

    def __init__(self, hidden: int = 889, name: str | None = None, **options):
        super().__init__(hidden=hidden, name=name or "polyhistor_lite", **options)

    def build_generator(self, backbone: SwinBackbone, sites: Sequence[AdapterSite], num_tasks: int):
        return LiteHyperNetworks(
            num_tasks, sites, backbone.embed_dim, self.reduction, self.rank, self.embed_dim,
            self.hidden,
        )
