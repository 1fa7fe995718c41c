"""HyperFormer (Karimi Mahabadi, Ruder, Dehghani, Henderson: "Parameter-efficient Multi-task
Fine-tuning for Transformers via Shared Hypernetworks", ACL 2021), the `hyperformer` row of
SPEC 3.2 (72.77 M trainable for Swin-T on PASCAL-Context, as reported in the Polyhistor
paper, whose baseline this is).

The paper adapts T5; no code exists for its Swin version, so this is our reading, in the
shape of `polyhistor` so that the two rows differ in what the papers say differs.

Adapters. Every block of the frozen Swin gets two bottleneck adapters, after attention and
after the MLP (`methods.adapters.insert_adapters`, Houlsby's placement, as the paper's
adapters), `x + up(gelu(down(x)))` with down d x m, up m x d, m = d // `reduction`. Their
weights are task-specific and generated, so the encoder runs one pass per task
(`per_task`, SPEC 2.3), batched across tasks: once per forward pass the hypernetwork emits
every task's weights of every adapter, and each adapter gathers its samples' weights by task
id (`methods.adapters.HyperEncoder`, `TaskAdapter`).

Conditioning (HyperFormer++, the paper's shared-hypernetwork variant, Sec. 2.4). A learned
task embedding (one per task), a layer-id embedding (one per block: 12 for Swin-T) and an
adapter-position embedding (one per position: after attention, after the MLP), each of size
`embed_dim`, are concatenated and projected by a linear layer with a ReLU to the
hypernetwork's input I, of size `hidden` (the paper's task projector network; one layer
here, as in `polyhistor`). The paper computes its task embeddings from fixed task features
through a two-layer projector; with four fixed tasks a learned embedding per task spans the
same inputs.

Hypernetwork. One large linear projection from I to the whole adapter matrix (d * m
entries) and one to its bias, for the down and for the up projection: the paper's
W = reshape(W^D I), unlike Polyhistor's pair of small heads emitting two low-rank factors.
Swin's stages differ in width, and one projection cannot emit matrices of four sizes, so
every stage has its own set of heads, shared by all its blocks and both positions (the layer
and position embeddings tell them apart): within a stage the hypernetwork is shared, as in
HyperFormer++; across stages its output shape must change. A stage of width d costs
(hidden + 1) (2 d m + m + d) parameters, quadratic in the width: the reason the paper's
count is large.

Not generated: the paper's task-conditional LayerNorms (the layer norms of its adapters and
of the T5 blocks are generated too). Houlsby adapters on Swin, as in the `adapter` and
`polyhistor` baselines, have no LayerNorm of their own, and the backbone's norms stay
frozen, as in `polyhistor`, so the comparison between the two hypernetwork methods rests on
the decomposition alone.

Initialisation and parametrisation, as `polyhistor`: embeddings standard normal; the
projection and the heads are `methods.adapters.ScaledLinear` (stored weight divided by its
fan-in in the forward pass, so that an Adam step moves a generated entry by about lr whatever
`hidden` is: without it the generated adapters overwrite the frozen features within the
warm-up); the down head starts so that the generated matrix has entry variance 1/d (fan-in
initialisation), the up head 1e-2 times its fan-in scale, bias heads at zero, so every
adapter starts near the identity and every parameter gets a gradient. With the up heads
zero an adapter is exactly the identity.

Trains: the embeddings, the projection and the heads, plus the decoders (the harness).
Frozen: the whole backbone, LayerNorms included.

Defaults (`reduction` 2, `embed_dim` 128, as `polyhistor`; `hidden` fitted last). For Swin-T
(stage widths 96, 192, 384, 768), four PASCAL tasks and decoders 1,946,624:
embeddings (4 + 12 + 2) * 128 = 2,304; projection 3 * 128 * 89 + 89 = 34,265; heads
90 * (9,360 + 37,152 + 148,032 + 590,976) = 70,696,800; 72,679,993 trainable with the
decoders, 90,007 (0.12 %) below the paper's 72.77 M. A step of `hidden` moves the count by
785,905, so hidden 90 would be 0.96 % above; the paper's widths are not published.

`tasks_per_pass` bounds memory: with fewer tasks per pass the tasks are processed in chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.backbone import SwinBackbone
from methods.adapters import (
    POSITIONS,
    UP_GAIN,
    AdapterSite,
    HyperEncoder,
    ScaledLinear,
    TaskWeight,
    bottleneck_width,
    hyper_encoder,
    tasks_per_pass_option,
)
from methods.base import Method, positive_ints


class TaskLayerPositionEmbedding(nn.Module):
    """HyperFormer++'s hypernetwork input, one vector per (task, adapter site):
    `I[t, l, p] = relu(W [task_t; layer_l; position_p] + c)`, shape (tasks, sites, hidden).

    Sites are numbered block by block, attention first (`adapter_sites`), so site i is block
    i // 2 at position i % 2. W starts with std 1/sqrt(3 * embed_dim), so the projection has
    unit variance before the ReLU (E[I^2] = 1/2), which the heads' initialisation assumes.
    """

    def __init__(self, num_tasks: int, num_blocks: int, embed_dim: int, hidden: int):
        super().__init__()
        self.task = nn.Parameter(torch.randn(num_tasks, embed_dim))
        self.layer = nn.Parameter(torch.randn(num_blocks, embed_dim))
        self.position = nn.Parameter(torch.randn(len(POSITIONS), embed_dim))
        self.project = ScaledLinear(3 * embed_dim, hidden, std=1 / math.sqrt(3 * embed_dim))

    def forward(self) -> Tensor:
        tasks, blocks = self.task.shape[0], self.layer.shape[0]
        positions = self.position.shape[0]
        e = self.task.shape[1]
        parts = torch.cat(
            [
                self.task.view(tasks, 1, 1, e).expand(tasks, blocks, positions, e),
                self.layer.view(1, blocks, 1, e).expand(tasks, blocks, positions, e),
                self.position.view(1, 1, positions, e).expand(tasks, blocks, positions, e),
            ],
            dim=-1,
        )
        return F.relu(self.project(parts.reshape(tasks, blocks * positions, 3 * e)))


class MatrixHeads(nn.Module):
    """One linear hypernetwork emitting a whole a x b adapter matrix, one its bias (b)."""

    def __init__(self, hidden: int, a: int, b: int, gain: float = 1.0):
        super().__init__()
        self.shape = (a, b)
        # E[I^2] = 1/2 at the start, so an emitted entry has variance hidden / 2 * std^2:
        # gain^2 / a, a fan-in initialisation of the generated matrix scaled by `gain`.
        self.matrix = ScaledLinear(hidden, a * b, std=gain * math.sqrt(2 / (hidden * a)))
        self.bias = ScaledLinear(hidden, b, std=0.0)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.matrix(z).view(*z.shape[:-1], *self.shape), self.bias(z)


class SharedHyperNetwork(nn.Module):
    """HyperFormer's generator: per stage, a head for the down and one for the up matrix."""

    def __init__(
        self,
        num_tasks: int,
        sites: Sequence[AdapterSite],
        reduction: int,
        embed_dim: int,
        hidden: int,
    ):
        super().__init__()
        if len(sites) % len(POSITIONS):
            raise ValueError("every block needs an adapter at each position")
        self.embedding = TaskLayerPositionEmbedding(
            num_tasks, len(sites) // len(POSITIONS), embed_dim, hidden
        )
        num_stages = max(site.stage for site in sites) + 1
        self.stages = nn.ModuleList()
        self.spans = []
        for i in range(num_stages):
            stage_sites = [s for s in sites if s.stage == i]
            d = stage_sites[0].dim
            m = bottleneck_width(d, reduction)
            self.stages.append(nn.ModuleDict({
                "down": MatrixHeads(hidden, d, m),
                "up": MatrixHeads(hidden, m, d, gain=UP_GAIN),
            }))
            # sites are numbered stage by stage, so each stage owns a contiguous range
            self.spans.append((stage_sites[0].index, stage_sites[-1].index + 1))

    def forward(self) -> list[tuple[TaskWeight, TaskWeight]]:
        z = self.embedding()  # (tasks, sites, hidden)
        weights = []
        for heads, (start, stop) in zip(self.stages, self.spans):
            down, down_bias = heads["down"](z[:, start:stop])
            up, up_bias = heads["up"](z[:, start:stop])
            for j in range(stop - start):
                weights.append((
                    TaskWeight(down[:, j], None, down_bias[:, j]),
                    TaskWeight(up[:, j], None, up_bias[:, j]),
                ))
        return weights


class HyperFormer(Method):
    """Task-specific adapters generated whole by a hypernetwork shared across layers."""

    paper_trainable_m = 72.77

    def __init__(
        self,
        reduction: int = 2,
        embed_dim: int = 128,
        hidden: int = 89,
        tasks_per_pass: int | None = None,
        name: str | None = None,
    ):
        super().__init__(name or "hyperformer")
        positive_ints(reduction=reduction, embed_dim=embed_dim, hidden=hidden)
        self.tasks_per_pass = tasks_per_pass_option(tasks_per_pass)
        self.reduction = int(reduction)
        self.embed_dim = int(embed_dim)
        self.hidden = int(hidden)

    @property
    def label(self) -> str:
        return f"{self.name} reduction={self.reduction}"

    def options(self) -> dict:
        return {
            "reduction": self.reduction,
            "embed_dim": self.embed_dim,
            "hidden": self.hidden,
            "tasks_per_pass": self.tasks_per_pass,
        }

    def build_encoder(self, backbone: SwinBackbone, tasks: Sequence[str]) -> HyperEncoder:
        def generator(sites: Sequence[AdapterSite]) -> SharedHyperNetwork:
            return SharedHyperNetwork(
                len(tasks), sites, self.reduction, self.embed_dim, self.hidden
            )

        return hyper_encoder(backbone, tasks, generator, self.tasks_per_pass)
