"""Polyhistor and Polyhistor-Lite (Liu et al.: "Polyhistor: Parameter-Efficient Multi-Task
Adaptation for Dense Vision Tasks", NeurIPS 2022), the `polyhistor` and `polyhistor_lite`
rows of protocol §3.2.

No official code exists; this is our reading of the paper, and every choice it leaves open
is listed here.

Adapters. Every block of the frozen Swin gets two bottleneck adapters, after attention and
after the MLP (`methods.adapters.insert_adapters`, the placement of the `adapter` baseline),
`x + up(gelu(down(x)))` with down d x m, up m x d and m = d // `reduction`. Their weights are
task-specific and generated, so the encoder runs one pass per task (`per_task`, protocol §2.3),
batched across tasks: once per forward pass the hypernetworks emit every task's weights of
every adapter, and each adapter gathers its samples' weights by task id
(`methods.adapters.HyperEncoder`, `TaskAdapter`).

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

Parametrisation. The projection and the heads are `methods.adapters.ScaledLinear`: the
stored weight is divided by its fan-in in the forward pass (and drawn that much wider, so
the start is the one above). Their input is a learned vector, the same at every step, so a
plain linear head's gradient is the outer product g z^T and an Adam step moves every emitted
entry by about lr * sum |z_j| (~0.4 lr * hidden): 39 lr for `polyhistor`, 355 lr for
`polyhistor_lite`, where a directly trained adapter weight moves by lr. With the harness's
shared recipe that made the generated adapters overwrite the frozen features within the
warm-up (on the synthetic benchmark at the `quick` budget, adapter outputs 10^2 to 10^4
times their input by the end of the first epoch and still growing, still several times their
input at 1/30 of the learning rate; the LayerNorms of the next blocks hide their scale from
the loss, so nothing stopped the growth), and both variants fell to constant predictions.
Scaled by the fan-in, a step moves an emitted entry by about lr * mean |z|, whatever
`hidden` is, and the generated adapters train at the pace of directly trained ones.
Parameter counts do not change.

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

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from benchmark.backbone import SwinBackbone
from methods.adapters import (
    UP_GAIN,
    AdapterSite,
    HyperEncoder,
    ScaledLinear,
    TaskLayerEmbedding,
    TaskWeight,
    bottleneck_width,
    hyper_encoder,
    tasks_per_pass_option,
)
from methods.base import Method, positive_ints


class FactorHeads(nn.Module):
    """A pair of linear hypernetworks emitting the two rank-r factors of an a x b matrix,
    (a x r) and (r x b), and a linear head emitting its bias (b)."""

    def __init__(self, hidden: int, a: int, b: int, rank: int, gain: float = 1.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"the generated factors need rank >= 1, got {rank}")
        self.shape = (a, b, rank)
        # The conditioning vector has E[z^2] = 1/2 at the start (TaskLayerEmbedding), so an
        # emitted entry has variance hidden / 2 * std^2: left 1/a, right gain^2 / r. The
        # heads are `ScaledLinear` (std is that of the effective weight), so that an Adam
        # step moves an emitted entry by about lr * mean |z|, not lr * hidden * mean |z|.
        self.left = ScaledLinear(hidden, a * rank, std=math.sqrt(2 / (hidden * a)))
        self.right = ScaledLinear(hidden, rank * b, std=gain * math.sqrt(2 / (hidden * rank)))
        self.bias = ScaledLinear(hidden, b, std=0.0)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, b, rank = self.shape
        lead = z.shape[:-1]
        return self.left(z).view(*lead, a, rank), self.right(z).view(*lead, rank, b), self.bias(z)


class DecomposedHyperNetworks(nn.Module):
    """Polyhistor's generator: per stage, factor heads for the down and up projections."""

    def __init__(
        self,
        num_tasks: int,
        sites: Sequence[AdapterSite],
        reduction: int,
        rank: int,
        embed_dim: int,
        hidden: int,
    ):
        super().__init__()
        self.embedding = TaskLayerEmbedding(num_tasks, len(sites), embed_dim, hidden)
        num_stages = max(site.stage for site in sites) + 1
        widths = [next(s.dim for s in sites if s.stage == i) for i in range(num_stages)]
        self.stages = nn.ModuleList(
            nn.ModuleDict({
                "down": FactorHeads(hidden, d, bottleneck_width(d, reduction), rank),
                "up": FactorHeads(hidden, bottleneck_width(d, reduction), d, rank, gain=UP_GAIN),
            })
            for d in widths
        )
        # Sites are numbered stage by stage, so each stage owns a contiguous range.
        self.spans = []
        for i in range(num_stages):
            indices = [s.index for s in sites if s.stage == i]
            self.spans.append((min(indices), max(indices) + 1))

    def forward(self) -> list[tuple[TaskWeight, TaskWeight]]:
        z = self.embedding()  # (tasks, sites, hidden)
        weights = []
        for heads, (start, stop) in zip(self.stages, self.spans):
            dl, dr, db = heads["down"](z[:, start:stop])
            ul, ur, ub = heads["up"](z[:, start:stop])
            for j in range(stop - start):
                down = TaskWeight(dl[:, j], dr[:, j], db[:, j])
                up = TaskWeight(ul[:, j], ur[:, j], ub[:, j])
                weights.append((down, up))
        return weights


class LiteHyperNetworks(nn.Module):
    """Polyhistor-Lite's generator: one template of d0 x m0 for every site, expanded to the
    site's width by its layer-wise scaling kernels, W = kron(S, template)."""

    def __init__(
        self,
        num_tasks: int,
        sites: Sequence[AdapterSite],
        template: int,
        reduction: int,
        rank: int,
        embed_dim: int,
        hidden: int,
    ):
        super().__init__()
        for site in sites:
            if site.dim % template:
                raise ValueError(f"width {site.dim} is not a multiple of the template {template}")
        if template % reduction:
            raise ValueError(f"reduction {reduction} does not divide the template width {template}")
        small = bottleneck_width(template, reduction)
        self.embedding = TaskLayerEmbedding(num_tasks, len(sites), embed_dim, hidden)
        self.down = FactorHeads(hidden, template, small, rank)
        self.up = FactorHeads(hidden, small, template, rank, gain=UP_GAIN)
        self.scale_factors = [site.dim // template for site in sites]
        self.down_scales = nn.ParameterList(nn.Parameter(torch.eye(s)) for s in self.scale_factors)
        self.up_scales = nn.ParameterList(nn.Parameter(torch.eye(s)) for s in self.scale_factors)

    def forward(self) -> list[tuple[TaskWeight, TaskWeight]]:
        z = self.embedding()
        dl, dr, db = self.down(z)
        ul, ur, ub = self.up(z)
        weights = []
        for i, s in enumerate(self.scale_factors):
            down = TaskWeight(dl[:, i], dr[:, i], db[:, i].repeat(1, s), self.down_scales[i])
            up = TaskWeight(ul[:, i], ur[:, i], ub[:, i].repeat(1, s), self.up_scales[i])
            weights.append((down, up))
        return weights


class Polyhistor(Method):
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
        super().__init__(name or "polyhistor")
        positive_ints(reduction=reduction, rank=rank, embed_dim=embed_dim, hidden=hidden)
        self.tasks_per_pass = tasks_per_pass_option(tasks_per_pass)
        self.reduction = int(reduction)
        self.rank = int(rank)
        self.embed_dim = int(embed_dim)
        self.hidden = int(hidden)

    @property
    def label(self) -> str:
        return f"{self.name} rank={self.rank}"

    def options(self) -> dict:
        return {
            "reduction": self.reduction,
            "rank": self.rank,
            "embed_dim": self.embed_dim,
            "hidden": self.hidden,
            "tasks_per_pass": self.tasks_per_pass,
        }

    def build_generator(self, backbone: SwinBackbone, sites: Sequence[AdapterSite], num_tasks: int):
        return DecomposedHyperNetworks(
            num_tasks, sites, self.reduction, self.rank, self.embed_dim, self.hidden
        )

    def build_encoder(self, backbone: SwinBackbone, tasks: Sequence[str]) -> HyperEncoder:
        return hyper_encoder(
            backbone, tasks, lambda sites: self.build_generator(backbone, sites, len(tasks)),
            self.tasks_per_pass,
        )


class PolyhistorLite(Polyhistor):
    """Polyhistor with one template kernel shared by all stages and layer-wise scaling."""

    paper_trainable_m = 6.41

    def __init__(
        self,
        reduction: int = 2,
        rank: int = 16,
        embed_dim: int = 128,
        hidden: int = 889,
        tasks_per_pass: int | None = None,
        name: str | None = None,
    ):
        super().__init__(
            reduction, rank, embed_dim, hidden, tasks_per_pass, name or "polyhistor_lite"
        )

    def build_generator(self, backbone: SwinBackbone, sites: Sequence[AdapterSite], num_tasks: int):
        return LiteHyperNetworks(
            num_tasks, sites, backbone.embed_dim, self.reduction, self.rank, self.embed_dim,
            self.hidden,
        )
