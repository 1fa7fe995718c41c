"""DiTASK (Mantri et al.: "DiTASK: Multi-Task Fine-Tuning with Diffeomorphic Transformations",
CVPR 2025), as its official code behaves. Published on PASCAL-Context with Swin-T: semseg
69.66, human_parts 62.02, sal 65.00, normals 17.10, Δm +3.22 % at "1.61 M" trainable.

Each adapted frozen linear W (out x in) is re-synthesised from its singular value
decomposition W = U diag(s) V^T with warped singular values, W' = U diag(s') V^T, and the
layer returns W' dropout(x) + b: there is no additive update, and the frozen product W x
(which the official layer computes and discards) is not formed. s' = warp(s, theta) is a 1-D
CPAB diffeomorphism of the index axis of the sorted spectrum (`methods.blocks.cpab.warp_signal`):
the largest and the smallest singular value stay, the order is kept. A qkv weight (3C x C)
is split into its q, k and v blocks, each decomposed and warped by the same theta.

Structure (MTLoRA's, `methods.mtlora`; task streams, protocol §2.3):

- Shared warp: in every block, qkv, proj, fc1 and fc2 each have their own theta of
  `tessellation` - 1 values (64 cells: 63).
- Task warps: proj, fc1 and fc2 of the last block of each stage have, per task, a theta of
  `task_tessellation` - 1 values (4 cells: 3) applied to the *original* s (not composed with
  the shared warp); the task output is W'_t x_t + b, the whole layer with the task's weight on
  the task stream (no shared term, unlike MTLoRA), x_t the dropped-out shared input for
  proj. The streams flow as in MTLoRA's `TaskStreamBlock`
  (`methods.blocks.spectral` holds the layers).
- The official code also gives every qkv task warps; the attention never reads them. They
  are kept (structure and count as released) but not computed: they never get a gradient.
  The shared warps of proj, fc1, fc2 in the very last block act on the last stage's shared
  stream, which reaches no decoder: no gradient either, as in the official code.
- theta is Kaiming-uniform (a = sqrt(5)) on a (1, d) tensor, U(-1/sqrt(d), 1/sqrt(d)): the
  warp is not the identity at the start (theta = 0 would be). Being 2-D, theta is decayed.

Trains: every theta, LayerNorms, the patch embedding, the relative-position tables, the
patch-merging reductions (fully), the decoders. Frozen: qkv, proj, fc1, fc2 weights and biases.
For Swin-T on the four PASCAL tasks: 3,549,482 trainable (1,602,858 without the decoders; the
reductions are 1,548,288 of it, the thetas 3,312). The paper's 1.61 M excludes the decoders
and equals, to the last digit, `task_tessellation=64`: 1,608,618 without the decoders
(3,555,242 with them). The default follows the released configuration (4 cells per task),
the code that produced the published numbers as far as can be known.

Faster, same numbers: the official layer recomputes the SVD of each frozen weight block on
every forward pass, for the shared warp and again for every task. The weight is frozen, so
`cache_svd` (default true) computes it once per device, dtype and weight version and reuses
it; `cache_svd=false` recomputes it on every forward pass as the official code does, once
for the shared weight and once for all task weights together (the official code: once per
task), so the measured gain of the cache is a lower bound. The outputs agree to float
rounding. The task warps of one layer are integrated together, as one batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from benchmark.backbone import SwinBackbone
from benchmark.method import Method, TaskStreamEncoder
from methods.blocks.inject import inject
from methods.blocks.options import dropout_rate, flag, positive_ints
from methods.blocks.spectral import DiTASKBlock, DiTASKLinear, MultiTaskDiTASKLinear
from methods.blocks.task_streams import TS_TARGETS, unfreeze_stream_extras


class DiTASK(Method):
    # The paper's 1.61 M excludes the decoders, which the suite's counts include: none here.
    paper_trainable_m = None

    def __init__(
        self,
        name: str = "ditask",
        tessellation: int = 64,
        task_tessellation: int = 4,
        dropout: float = 0.05,
        cache_svd: bool = True,
    ):
        super().__init__(name)
        self.tessellation, self.task_tessellation = positive_ints(
            tessellation=tessellation, task_tessellation=task_tessellation
        )
        if self.tessellation < 2 or self.task_tessellation < 2:
            raise ValueError("tessellation and task_tessellation need at least 2 cells")
        self.dropout = dropout_rate(dropout)
        self.cache_svd = flag("cache_svd", cache_svd)

    @property
    def label(self) -> str:
        suffix = "" if self.task_tessellation == 4 else f" task_nc={self.task_tessellation}"
        return f"ditask nc={self.tessellation}{suffix}"

    def build_encoder(self, backbone: SwinBackbone, tasks: Sequence[str]) -> TaskStreamEncoder:
        unfreeze_stream_extras(backbone)

        def layer(kind: type[DiTASKLinear], layer_tasks: Sequence[str]):
            return lambda linear: kind(linear, self.tessellation, layer_tasks,
                                       self.task_tessellation, self.dropout, self.cache_svd)

        for stage in backbone.stages:
            for i, block in enumerate(stage.blocks):
                inject(block, ["attn.qkv"], layer(DiTASKLinear, tasks))  # task warps unused
                last = i == len(stage.blocks) - 1
                inject(block, TS_TARGETS, layer(MultiTaskDiTASKLinear if last else DiTASKLinear,
                                                tasks if last else ()))
            stage.blocks[-1] = DiTASKBlock(stage.blocks[-1])
            if not isinstance(stage.merge, nn.Identity):
                stage.merge.reduction.requires_grad_(True)
        return TaskStreamEncoder(backbone, tasks)
