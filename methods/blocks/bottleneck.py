"""Bottleneck adapters and where they go in a Swin block (the adapter family of methods).

- `Adapter`: Houlsby et al.'s bottleneck (ICML 2019), `x + up(act(down(x)))`, initialised
  near zero so that the adapted network starts as (almost) the pre-trained one.
- `AdapterSite`, `insert_adapters`, `insert_adapters_at`: where adapters go in a Swin block,
  whatever the adapter (Compacter's PHM adapters, `methods.blocks.phm`; the generated ones
  of Polyhistor and HyperFormer, `methods.blocks.hypernet`).

Placement. A timm Swin block computes `x + drop_path1(attn(norm1(x)))` and then
`x + drop_path2(mlp(norm2(x)))`. An adapter is put in front of each drop-path module
(`AdaptedBranch`), so it sees the sub-layer's output after its projection (`attn.proj`,
`mlp.fc2`) and their dropout, and its output goes through stochastic depth and the residual
addition: Houlsby's placement ("applied directly to the output of the sub-layer, after the
projection back to the input size, but before adding the skip connection back"). Wrapping
the drop-path rather than `attn.proj` has two reasons: `attn.proj` runs on shifted, padded
windows (num_windows * batch, tokens, C), so a per-sample adapter would have to know the
window layout, while the drop-path sees the un-windowed map (batch, H, W, C) or
(batch, H * W, C) whose first dimension is the sample; and the linear layers stay untouched,
free for other methods' wrappers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmark.backbone import SwinBackbone

# The two adapters of a block, in the order the block runs them.
POSITIONS = ("attn", "mlp")


class Adapter(nn.Module):
    """Houlsby's bottleneck adapter: `x + up(gelu(down(x)))` on the last dimension.

    Both projections are drawn from a zero-mean normal with std `init_std` truncated at two
    standard deviations, biases zero (Houlsby et al., Sec. 2.1: a near-identity start).
    """

    def __init__(
        self,
        dim: int,
        bottleneck: int,
        init_std: float = 1e-2,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if bottleneck < 1:
            raise ValueError(f"an adapter needs a bottleneck >= 1, got {bottleneck}")
        self.init_std = init_std
        self.down = nn.Linear(dim, bottleneck, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.init_std
        for linear in (self.down, self.up):
            nn.init.trunc_normal_(linear.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(self.act(self.down(x)))


class AdaptedBranch(nn.Module):
    """A block's residual branch ending: the adapter, then the block's own drop-path."""

    def __init__(self, adapter: nn.Module, drop_path: nn.Module):
        super().__init__()
        self.adapter = adapter
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        return self.drop_path(self.adapter(x))


def bottleneck_width(dim: int, reduction: int) -> int:
    """The hidden width of an adapter of width `dim` with reduction factor `reduction`."""
    if dim // reduction < 1:
        raise ValueError(f"reduction {reduction} leaves no bottleneck for width {dim}")
    return dim // reduction


@dataclass(frozen=True)
class AdapterSite:
    """One adapter position: `index` counts sites stage by stage, block by block, attn first."""

    index: int
    stage: int
    block: int
    position: str  # "attn" or "mlp"
    dim: int  # the block's width


def adapter_sites(backbone: SwinBackbone) -> list[AdapterSite]:
    """Two sites per block (after attention, after the MLP) in execution order."""
    sites: list[AdapterSite] = []
    for s, stage in enumerate(backbone.stages):
        for b, block in enumerate(stage.blocks):
            for position in POSITIONS:
                sites.append(AdapterSite(len(sites), s, b, position, block.dim))
    return sites


def insert_adapters_at(
    backbone: SwinBackbone,
    make: Callable[[AdapterSite], nn.Module],
    positions: Sequence[str] = POSITIONS,
) -> list[AdapterSite]:
    """Put `make(site)` at the given positions (`attn`, `mlp`) of every block, in execution
    order; returns the sites that got an adapter, with their `index` counting those sites
    only."""
    unknown = set(positions) - set(POSITIONS)
    if unknown or not positions:
        raise ValueError(f"positions must be a non-empty subset of {POSITIONS}, got {positions}")
    sites: list[AdapterSite] = []
    for site in adapter_sites(backbone):
        if site.position not in positions:
            continue
        site = AdapterSite(len(sites), site.stage, site.block, site.position, site.dim)
        block = backbone.stages[site.stage].blocks[site.block]
        attr = "drop_path1" if site.position == "attn" else "drop_path2"
        setattr(block, attr, AdaptedBranch(make(site), getattr(block, attr)))
        sites.append(site)
    return sites


def insert_adapters(
    backbone: SwinBackbone, make: Callable[[AdapterSite], nn.Module]
) -> list[AdapterSite]:
    """Put `make(site)` after attention and after the MLP of every block; returns the sites."""
    return insert_adapters_at(backbone, make)
