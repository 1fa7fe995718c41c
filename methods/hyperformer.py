"""HyperFormer (Karimi Mahabadi, Ruder, Dehghani, Henderson: "Parameter-efficient Multi-task
Fine-tuning for Transformers via Shared Hypernetworks", ACL 2021), the `hyperformer` row of
protocol §3.2 (72.77 M trainable for Swin-T on PASCAL-Context, as reported in the Polyhistor
paper, whose baseline this is), built as the official code's released `hyperformer`
configuration builds it for T5, ported to Swin's stages.

The official code and its configuration. The released HyperFormer configuration builds,
for each T5 stack, one hypernetwork shared by all its blocks and conditioned on the block
(the README's "one hypernetwork per layer" describes another code path, which no released
configuration selects; HyperFormer++ is a third one, with one set of heads for both adapter
positions). For task tau and block l:

- Task projector: I = LN( W_2 relu(W_1 [z_tau; e_l] + b_1) + b_2 ), with z_tau the task
  embedding and e_l the block's row of a learned layer-id table (both of width t = 64,
  the effective value of the configuration's twice-given `task_embedding_dim`), W_1
  (128 x 128), W_2 (64 x 128), and an affine LayerNorm(64, eps 1e-6).
- Heads: for each of the block's two adapter positions (after attention, after the
  feed-forward), one linear layer from I per generated tensor: the down matrix (m x d) and
  its bias (m), the up matrix (d x m) and its bias (d), and the gamma (d) and beta (d) of
  the adapter's LayerNorm.
- Adapter, on the sub-layer's output y before the sub-layer's dropout and residual:
  a(y) = y + LN_{gamma, beta}( W_up gelu(W_down y + b_down) + b_up ), with the tanh
  approximation of GELU (`gelu_new`) and the generated gamma and beta used as they come
  (LayerNorm eps 1e-5, the functional default). No dropout, no LayerNorm before.
- Initialisation: every linear layer of the projector and the heads N(0, 0.01^2) with
  zero bias; task embeddings and layer table N(0, 1); the projector's LayerNorm gamma 1,
  beta 0. Since I is layer-normalised (|I|^2 ~ 64), the generated entries start with std
  about 0.08: gamma has mean about 0, not 1, and the adapter starts small, not exactly as
  the identity.
- Trains: the task embeddings, the hypernetworks and every LayerNorm of the backbone
  (`unfreeze_layer_norms`); everything else is frozen. Everything is recomputed at every
  forward pass.

Our port (`per_task` mode, protocol §2.3): the task decides the encoder's weights, so the
encoder runs one pass per task, batched across tasks (`methods.adapters.HyperEncoder`: the
generator runs once per forward pass and each adapter gathers its samples' weights by task
id). Choices the official code leaves open for Swin, and ours:

- Generated shapes depend on the width, so one hypernetwork cannot serve Swin's four
  widths: every stage has its own (projector, layer table with one row per block of the
  stage, heads), as each T5 stack has its own; the task embeddings are one table shared by
  the stages, as the official code shares them between its stacks.
- Placement: after the attention's output projection and after the MLP's fc2, before the
  block's stochastic depth and residual addition (`methods.adapters.insert_adapters`).
- Backbone LayerNorms trained: every one of them (norm1 and norm2 of every block, the
  patch-embedding norm, the merging norms; Swin's have a weight and a bias, T5's RMS norms
  a weight only).
- Multi-task batches: every batch serves all tasks through the harness's multi-task loss
  (the official trainer draws one task per batch).
- The linear layers are plain ones, as in the official code: an Adam step moves a generated
  entry by about lr times the sum of |I|, faster than a directly trained weight moves.

Count and the fitted width. The official reduction factor 32 (m = 3 / 6 / 12 / 24 on Swin-T)
gives 9,002,714 trainable, far from the paper's 72.77 M, whose widths are not published. We
keep every official width (t = 64, hidden 128, t' = 64) and fit only the free one, the
adapter bottleneck: `reduction` is a real number and a block of width d gets the bottleneck
round(d / reduction); the default 2.91 gives m = 33 / 66 / 132 / 264. A stage of width d,
bottleneck m and L blocks costs L t + (2t h + h) + (h t' + t') + 2 t' for its projector
and 2 (t' + 1) (2 d m + m + 3 d) for its heads; with the four task embeddings (4 t), the
LayerNorms (23,232) and the decoders (1,946,624), Swin-T on PASCAL has 72,709,214 trainable,
60,786 (0.08 %) below the paper's 72.77 M (a stage-0 bottleneck of 32 or 34 would be
2.2 M below or 2.1 M above).

`tasks_per_pass` bounds memory: with fewer tasks per pass the tasks are processed in chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.backbone import SwinBackbone
from benchmark.model import TaskContext
from methods.adapters import (
    POSITIONS,
    AdapterSite,
    GeneratedWeights,
    HyperEncoder,
    TaskWeight,
    insert_adapters,
    tasks_per_pass_option,
)
from methods.base import Method, freeze, positive_ints, unfreeze_norms

INIT_STD = 1e-2  # the official initialisation of every hypernetwork linear layer
PROJECTOR_EPS = 1e-6  # the task projector's LayerNorm
ADAPTER_EPS = 1e-5  # the generated adapter LayerNorm (the functional default)


def hyper_linear(in_features: int, out_features: int) -> nn.Linear:
    """A hypernetwork linear layer initialised as the official code: N(0, 0.01^2), bias 0."""
    layer = nn.Linear(in_features, out_features)
    nn.init.normal_(layer.weight, std=INIT_STD)
    nn.init.zeros_(layer.bias)
    return layer


def bottleneck_of(dim: int, reduction: float) -> int:
    """round(dim / reduction), halves up; a ValueError when that is 0."""
    m = math.floor(dim / reduction + 0.5)
    if m < 1:
        raise ValueError(f"reduction {reduction} leaves no bottleneck for width {dim}")
    return m


class AdapterHeads(nn.Module):
    """The heads of one adapter position: down (d x m, + m), up (m x d, + d), gamma, beta."""

    def __init__(self, projected: int, dim: int, bottleneck: int):
        super().__init__()
        self.dim, self.bottleneck = dim, bottleneck
        self.down = hyper_linear(projected, dim * bottleneck)
        self.down_bias = hyper_linear(projected, bottleneck)
        self.up = hyper_linear(projected, bottleneck * dim)
        self.up_bias = hyper_linear(projected, dim)
        self.gamma = hyper_linear(projected, dim)
        self.beta = hyper_linear(projected, dim)

    def forward(self, i: Tensor) -> tuple[TaskWeight, TaskWeight, Tensor, Tensor]:
        """i: (tasks, projected) -> every task's (down, up, gamma, beta) for one adapter."""
        d, m = self.dim, self.bottleneck
        down = TaskWeight(self.down(i).view(-1, d, m), None, self.down_bias(i))
        up = TaskWeight(self.up(i).view(-1, m, d), None, self.up_bias(i))
        return down, up, self.gamma(i), self.beta(i)


class StageHyperNetwork(nn.Module):
    """One stage's hypernetwork: layer table, task projector with its LayerNorm, and the
    heads of both adapter positions, shared by the stage's blocks."""

    def __init__(self, blocks: int, dim: int, bottleneck: int, embed_dim: int, hidden: int,
                 projected: int):
        super().__init__()
        self.layer = nn.Parameter(torch.randn(blocks, embed_dim))
        self.projector = nn.Sequential(
            hyper_linear(2 * embed_dim, hidden), nn.ReLU(), hyper_linear(hidden, projected)
        )
        self.norm = nn.LayerNorm(projected, eps=PROJECTOR_EPS)
        self.heads = nn.ModuleDict(
            {position: AdapterHeads(projected, dim, bottleneck) for position in POSITIONS}
        )

    def conditioning(self, task: Tensor) -> Tensor:
        """I for every (task, block of the stage): (tasks, blocks, projected)."""
        tasks, blocks = task.shape[0], self.layer.shape[0]
        pairs = torch.cat([
            task.unsqueeze(1).expand(tasks, blocks, -1),
            self.layer.unsqueeze(0).expand(tasks, blocks, -1),
        ], dim=-1)
        return self.norm(self.projector(pairs))


class HyperFormerGenerator(nn.Module):
    """Every task's adapter tensors for every site, from the task embeddings and the stages'
    hypernetworks; sites in execution order (stage, block, attention before the MLP)."""

    def __init__(self, num_tasks: int, sites: Sequence[AdapterSite], reduction: float,
                 embed_dim: int, hidden: int, projected: int):
        super().__init__()
        self.task = nn.Parameter(torch.randn(num_tasks, embed_dim))
        self.sites = list(sites)
        self.stages = nn.ModuleList()
        for s in range(max(site.stage for site in sites) + 1):
            stage_sites = [site for site in sites if site.stage == s]
            dim = stage_sites[0].dim
            blocks = len({site.block for site in stage_sites})
            self.stages.append(StageHyperNetwork(
                blocks, dim, bottleneck_of(dim, reduction), embed_dim, hidden, projected
            ))

    def forward(self) -> list[tuple[TaskWeight, TaskWeight, Tensor, Tensor]]:
        conditioning = [stage.conditioning(self.task) for stage in self.stages]
        return [
            self.stages[site.stage].heads[site.position](conditioning[site.stage][:, site.block])
            for site in self.sites
        ]


class GeneratedAdapter(nn.Module):
    """`y + LN_{gamma, beta}(up(gelu_tanh(down(y))))` with each sample's task's generated
    tensors (`weights.get(index)`); no parameters of its own."""

    def __init__(self, index: int, weights: GeneratedWeights, context: TaskContext):
        super().__init__()
        self.index = index
        self.weights = weights
        self.context = context

    def forward(self, x: Tensor) -> Tensor:
        ids = self.context.current()
        down, up, gamma, beta = self.weights.get(self.index)
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        branch = up.apply(F.gelu(down.apply(flat, ids), approximate="tanh"), ids)
        branch = F.layer_norm(branch, branch.shape[-1:], eps=ADAPTER_EPS)
        branch = branch * gamma[ids].unsqueeze(1) + beta[ids].unsqueeze(1)
        return (flat + branch).reshape(x.shape)


class HyperFormer(Method):
    """Task-conditioned adapters generated by one hypernetwork per stage (see the module)."""

    paper_trainable_m = 72.77

    def __init__(
        self,
        reduction: float = 2.91,
        embed_dim: int = 64,
        hidden: int = 128,
        projected: int = 64,
        tasks_per_pass: int | None = None,
        name: str | None = None,
    ):
        super().__init__(name or "hyperformer")
        self.embed_dim, self.hidden, self.projected = positive_ints(
            embed_dim=embed_dim, hidden=hidden, projected=projected
        )
        if isinstance(reduction, bool) or not isinstance(reduction, int | float) \
                or not math.isfinite(reduction) or reduction <= 0:
            raise ValueError(f"reduction must be a positive number, got {reduction!r}")
        self.reduction = float(reduction)
        self.tasks_per_pass = tasks_per_pass_option(tasks_per_pass)

    @property
    def label(self) -> str:
        return f"{self.name} reduction={self.reduction:g}"

    def options(self) -> dict:
        return {
            "reduction": self.reduction,
            "embed_dim": self.embed_dim,
            "hidden": self.hidden,
            "projected": self.projected,
            "tasks_per_pass": self.tasks_per_pass,
        }

    def build_encoder(self, backbone: SwinBackbone, tasks: Sequence[str]) -> HyperEncoder:
        freeze(backbone)
        unfreeze_norms(backbone)
        context = TaskContext(tasks)
        weights = GeneratedWeights()
        sites = insert_adapters(
            backbone, lambda site: GeneratedAdapter(site.index, weights, context)
        )
        with torch.device(backbone.patch_embed.proj.weight.device):
            generator = HyperFormerGenerator(
                len(tasks), sites, self.reduction, self.embed_dim, self.hidden, self.projected
            )
        return HyperEncoder(backbone, tasks, context, generator, weights, self.tasks_per_pass)
