"""Polyhistor's hypernetworks (`methods.polyhistor` says what they are and why):
`FactorHeads` emit the two low-rank factors of an adapter matrix and its bias;
`DecomposedHyperNetworks` (`polyhistor`) has a set per stage, `LiteHyperNetworks`
(`polyhistor_lite`) one template set expanded per site by its layer-wise scaling kernels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from methods.blocks.bottleneck import AdapterSite, bottleneck_width
from methods.blocks.hypernet import UP_GAIN, ScaledLinear, TaskLayerEmbedding, TaskWeight


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
