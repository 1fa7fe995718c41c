"""What the task-stream methods share (MTLoRA, TADFormer, DiTASK; `task_streams` mode):

- `TA_TARGETS`, `TS_TARGETS`: the linears adapted in every block, and those that also have
  task paths in the last block of a stage (protocol §3.1);
- `TaskStreamBlock`: MTLoRA's last block of a stage, computing the shared stream and every
  task stream in one pass;
- `unfreeze_stream_extras`: what these methods train of the backbone besides their layers;
- `LowRankStreams`: the base of MTLoRA and TADFormer (TA-LoRA of rank `rank`, fixed scale).
"""

from __future__ import annotations

from torch import Tensor, nn

from benchmark.backbone import SwinBackbone, TaskStreams
from benchmark.method import Method
from methods.blocks.inject import freeze, unfreeze_norms
from methods.blocks.lowrank import LoRALinear, MultiTaskLoRALinear
from methods.blocks.options import dropout_rate, positive_ints

# The shared-path linears of every block, and the subset that also has task paths in the
# last block of a stage (protocol §3.1).
TA_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
TS_TARGETS = ("attn.proj", "mlp.fc1", "mlp.fc2")


class TaskStreamBlock(nn.Module):
    """The last Swin block of a stage, computing the shared stream and every task stream.

    Wraps a timm `SwinTransformerBlock` whose `attn.proj`, `mlp.fc1` and `mlp.fc2` are
    `MultiTaskLoRALinear`s and reuses its frozen modules: norms, window partition, shift,
    mask and relative position bias (through the block's own `_attn`), GELU, drop path.
    Returns `TaskStreams` (NHWC).
    """

    #: the multi-task layers it runs (another method's with the same interface may replace it)
    layer_types: tuple[type, ...] = (MultiTaskLoRALinear,)

    def __init__(self, block: nn.Module):
        super().__init__()
        layers = (block.attn.proj, block.mlp.fc1, block.mlp.fc2)
        if not all(isinstance(m, self.layer_types) for m in layers):
            raise TypeError("proj, fc1 and fc2 of a task-stream block must be multi-task layers")
        self.tasks = block.attn.proj.tasks
        # With proj out of the attention, block._attn returns the attention output per token
        # in image layout; proj is per token, so applying it afterwards changes nothing.
        self.proj, self.proj_drop = block.attn.proj, block.attn.proj_drop
        block.attn.proj, block.attn.proj_drop = nn.Identity(), nn.Identity()
        self.block = block

    def proj_task_inputs(self, normed: Tensor, context: Tensor) -> dict[str, Tensor] | None:
        """What the task updates of `proj` read (None: the shared attention output `context`,
        as in MTLoRA); `normed` is the block's input after norm1. TADFormer overrides it."""
        return None

    def forward(self, x: Tensor) -> TaskStreams:
        blk, mlp = self.block, self.block.mlp
        normed = blk.norm1(x)
        context = blk._attn(normed)
        attn, attn_t = self.proj(context, self.proj_task_inputs(normed, context))
        shared = x + blk.drop_path1(self.proj_drop(attn))
        streams = {t: x + blk.drop_path1(self.proj_drop(a)) for t, a in attn_t.items()}

        hidden, hidden_t = mlp.fc1(blk.norm2(shared), {t: blk.norm2(s) for t, s in streams.items()})
        hidden = mlp.norm(mlp.drop1(mlp.act(hidden)))
        hidden_t = {t: mlp.norm(mlp.drop1(mlp.act(h))) for t, h in hidden_t.items()}
        out, out_t = mlp.fc2(hidden, hidden_t)
        shared = shared + blk.drop_path2(mlp.drop2(out))
        streams = {t: s + blk.drop_path2(mlp.drop2(out_t[t])) for t, s in streams.items()}
        return TaskStreams(shared, streams)


def unfreeze_stream_extras(backbone: SwinBackbone) -> None:
    """Freeze `backbone` but its LayerNorms (blocks, patch merging, patch embedding), the
    patch embedding and the relative-position tables of every block: what MTLoRA, TADFormer
    and DiTASK train of it besides their own layers (and, but in TADFormer and MTLoRA+, the
    merging reductions)."""
    freeze(backbone)
    backbone.patch_embed.requires_grad_(True)
    unfreeze_norms(backbone)
    for block in backbone.blocks():
        block.attn.relative_position_bias_table.requires_grad_(True)


class LowRankStreams(Method):
    """The base of MTLoRA and TADFormer: stores the `ranks` (positive integers), the fixed
    multiplier `scale` and the LoRA `dropout`; `ta_lora` wraps a linear in TA-LoRA."""

    def __init__(self, name: str, scale: float, dropout: float, **ranks: int):
        super().__init__(name)
        for key, value in zip(ranks, positive_ints(**ranks)):
            setattr(self, key, value)
        self.dropout = dropout_rate(dropout)
        self.scale = float(scale)

    def ta_lora(self, linear: nn.Linear) -> LoRALinear:
        return LoRALinear(linear, self.rank, self.scale, self.dropout)
