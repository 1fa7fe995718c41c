"""HyperFormer's hypernetworks and generated adapters, as the official configuration builds
them (`methods.hyperformer` says what they are and how they are ported to Swin):
`StageHyperNetwork` (one stage's layer table, task projector and `AdapterHeads`),
`HyperFormerGenerator` (every site's tensors) and `GeneratedAdapter` (the adapter with its
generated LayerNorm)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.blocks.bottleneck import POSITIONS, AdapterSite
from methods.blocks.hypernet import TaskAdapter, TaskWeight

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


class GeneratedAdapter(TaskAdapter):
    """`y + LN_{gamma, beta}(up(gelu_tanh(down(y))))` with each sample's task's generated
    tensors (`weights.get(index)`); no parameters of its own."""

    def forward(self, x: Tensor) -> Tensor:
        ids = self.context.current()
        down, up, gamma, beta = self.weights.get(self.index)
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        branch = up.apply(F.gelu(down.apply(flat, ids), approximate="tanh"), ids)
        branch = F.layer_norm(branch, branch.shape[-1:], eps=ADAPTER_EPS)
        branch = branch * gamma[ids].unsqueeze(1) + beta[ids].unsqueeze(1)
        return (flat + branch).reshape(x.shape)
