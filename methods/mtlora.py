"""MTLoRA and MTLoRA+ (Agiza, Neseem, Reda: "MTLoRA: Low-Rank Adaptation Approach for
Efficient Multi-Task Learning", CVPR 2024), as its official implementation behaves (protocol §3.1).

Layers:

- TA-LoRA (task-agnostic, shared by all tasks), rank `rank`, on `qkv`, `proj`, `fc1` and
  `fc2` of every block of every stage.
- TS-LoRA (task-specific), rank `task_rank` per task, only in the last block of each stage
  and only on `proj`, `fc1`, `fc2`; never on `qkv`, so the attention maps stay shared.
  These layers are `methods.blocks.lowrank.MultiTaskLoRALinear`: the frozen product is computed
  on the shared stream and a task output carries its own update but not the shared one.
- Both paths scale by the fixed `scale` (4.0, not alpha / r), with LoRA dropout `dropout`
  (0.05) on the shared input; A Kaiming-uniform (a = sqrt(5)), B zero.

The last block of each stage (`methods.blocks.task_streams.TaskStreamBlock`) runs the shared
stream as a normal block with TA-LoRA and, in the same pass, one stream per task:

    a_t   = x + droppath(proj_t(shared attention output))
    h_t   = GELU(fc1_t(norm2(shared), norm2(a_t)))
    out_t = a_t + droppath(fc2_t(GELU(shared fc1 output), h_t))

where `layer_t(x, x_t)` is the task output of a multi-task layer whose frozen product reads
x and whose task update reads x_t. The same patch merging is applied to the shared stream
and to every task stream; only the shared stream continues to the next stage and the task
streams of every stage go to their task's decoder (`benchmark.backbone.TaskStreams`). One
encoder pass serves all tasks.

Trains: TA-LoRA and TS-LoRA factors, all LayerNorm weights and biases (blocks, patch
merging, patch embedding), the patch embedding (convolution and its norm), the
relative-position bias tables, and the patch-merging reductions (fully, in `mtlora`), plus
the decoders (the harness). Frozen: the weights and biases of `qkv`, `proj`, `fc1`, `fc2`.
For Swin-T on the four PASCAL tasks with `task_rank` 4 this is 4,953,146 / 6,083,642 /
8,344,634 trainable at r = 16 / 32 / 64.

MTLoRA+ (`mtlora_plus`): the patch-merging reductions are frozen and carry TA-LoRA (rank
`rank`) instead; task streams pass through the same adapted merging. 3,469,370 / 4,664,378 /
7,054,394 trainable at r = 16 / 32 / 64.

Interpretations where the paper is silent and the official code decides:

- Drop path is drawn independently for the shared stream and for each task stream (the
  official block calls it once per stream), as is the LoRA dropout of an adapted merging.
- The attention of the last block runs once: `proj` is taken out of timm's attention
  module and applied to its output after the windows are merged back. `proj` acts on each
  token alone and window merging, the reverse shift and the crop only move or drop tokens,
  so this is the same computation, and it yields the shared attention output that the
  shared and task projections both read.
- The shared stream of the last stage reaches no decoder, so the TA-LoRA of `fc2` in the
  very last block (which acts on nothing else) receives no gradient. It is kept and
  counted, as in the official code and its parameter count (a distributed wrapper must
  allow unused parameters).
- `fc1_t` and `fc2_t` read the task stream only through their TS-LoRA update (the frozen
  product reads the shared stream), exactly as the official `MTLoRALinear`.

Option `dora` (default false; not in the paper): DoRA's weight decomposition (Liu et al.,
ICML 2024; `methods.dora`) on every adapted layer. A TA-LoRA layer becomes a
`DoRALinear`: a trainable magnitude per output feature, initialised to the frozen weight's
norm, times W + s B A normalised per output feature. A multi-task layer becomes a
`MultiTaskDoRALinear`: one magnitude per output feature shared by its shared output and
every task output, each output normalising its own direction (W + s B_sh A_sh for the
shared one, W + s B_t A_t for task t), so a task output still excludes the shared update;
no paper reports this combination. Labels read `mtlora dora r=16` and `mtlora+ dora r=16`.
The count grows by the magnitudes, one per output of every adapted linear: 9 C per block
of width C (qkv 3C, proj C, fc1 4C, fc2 C), 39,744 for Swin-T, plus 2 C per merging
reduction in MTLoRA+ (1,344 for Swin-T).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from benchmark.backbone import SwinBackbone
from benchmark.method import TaskStreamEncoder
from methods.blocks.inject import inject
from methods.blocks.lowrank import (
    DoRALinear,
    LoRALinear,
    MultiTaskDoRALinear,
    MultiTaskLoRALinear,
)
from methods.blocks.options import flag
from methods.blocks.task_streams import (
    TA_TARGETS,
    TS_TARGETS,
    LowRankStreams,
    TaskStreamBlock,
    unfreeze_stream_extras,
)


class MTLoRA(LowRankStreams):
    # protocol §3.1 / the paper's Table 1, Swin-T on PASCAL-Context with task_rank 4
    PAPER_TRAINABLE_M = {16: 4.95, 32: 6.08, 64: 8.34}
    adapt_merging = False  # MTLoRA+ freezes the merging reductions and gives them TA-LoRA
    short_name = "mtlora"

    def __init__(
        self,
        name: str = "mtlora",
        rank: int = 16,
        task_rank: int = 4,
        scale: float = 4.0,
        dropout: float = 0.05,
        dora: bool = False,
    ):
        super().__init__(name, scale, dropout, rank=rank, task_rank=task_rank)
        self.dora = flag("dora", dora)
        self.paper_trainable_m = (
            self.PAPER_TRAINABLE_M.get(self.rank) if self.task_rank == 4 and not dora else None
        )

    @property
    def label(self) -> str:
        suffix = "" if self.task_rank == 4 else f" task_r={self.task_rank}"
        dora = " dora" if self.dora else ""
        return f"{self.short_name}{dora} r={self.rank}{suffix}"

    def ta_lora(self, linear: nn.Linear) -> LoRALinear:
        layer = DoRALinear if self.dora else LoRALinear
        return layer(linear, self.rank, self.scale, self.dropout)

    def build_encoder(self, backbone: SwinBackbone, tasks: Sequence[str]) -> TaskStreamEncoder:
        unfreeze_stream_extras(backbone)

        def ts_lora(linear: nn.Linear) -> MultiTaskLoRALinear:
            layer = MultiTaskDoRALinear if self.dora else MultiTaskLoRALinear
            return layer(
                linear, self.rank, tasks, self.task_rank, self.scale, self.scale, self.dropout
            )

        for stage in backbone.stages:
            last = stage.blocks[-1]
            inject(last, TS_TARGETS, ts_lora)
            inject(last, ["attn.qkv"], self.ta_lora)
            for block in stage.blocks[:-1]:
                inject(block, TA_TARGETS, self.ta_lora)
            stage.blocks[-1] = TaskStreamBlock(last)
            if isinstance(stage.merge, nn.Identity):
                continue
            if self.adapt_merging:
                inject(stage.merge, ["reduction"], self.ta_lora)
            else:
                for p in stage.merge.reduction.parameters():
                    p.requires_grad_(True)
        return TaskStreamEncoder(backbone, tasks)


class MTLoRAPlus(MTLoRA):
    """MTLoRA+: the merging reductions are frozen and adapted by TA-LoRA (protocol §3.1)."""

    # protocol §3.1: the official configuration's counts for Swin-T / PASCAL with task_rank 4
    PAPER_TRAINABLE_M = {16: 3.47, 32: 4.66, 64: 7.05}
    adapt_merging = True
    short_name = "mtlora+"

    def __init__(self, name: str = "mtlora_plus", **options):
        super().__init__(name, **options)
