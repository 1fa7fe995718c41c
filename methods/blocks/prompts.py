"""Prompt tokens in Swin's windowed attention (Jia et al.: "Visual Prompt Tuning", ECCV 2022).

Two forms, one per VPT variant (`methods.vpt` says how each follows the official Swin code):

- `PromptedWindowAttention` (VPT-deep): the prompts of a block act on the patch tokens only
  through the keys and values they give in that block's attention; their own outputs are
  thrown away, since the next block replaces them.
  - The prompt tokens (P x C, in the block's input space) go through the block's own `norm1`
    and `qkv`, as a prepended token would; only their keys and values are kept.
  - Every window's queries attend to [prompt keys; window keys]: the same P prompts are
    visible from every window, and they are not in any window, so the relative-position
    bias and the shifted-window mask of timm's block are padded with zeros for their
    columns (no position, no region).
  - `prompts_visible = False` masks the prompt columns with -inf, which gives back the
    frozen block's attention exactly (zero prompts would not: a softmax over extra keys
    changes every window's output).
- `prompted_block` and `merge_prompts` (VPT-shallow): the prompts are tokens of the stream
  like the patches. A block takes (patch map, prompts of each image) and returns both
  updated; `merge_prompts` carries the prompts through a patch merging;
  `ShallowPromptEncoder` runs the backbone so.

The frozen modules are reused as they are (`norm1`, `qkv`, `proj`, the relative-position
table, the block's mask, the dropouts, `norm2`, the MLP, the merging's norm and reduction).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import window_partition, window_reverse
from torch import Tensor, nn

from benchmark.backbone import SwinBackbone
from benchmark.method import Encoder


def init_prompts(prompts: Tensor, fan_in: int, fan_out: int) -> Tensor:
    """VPT's Xavier-uniform initialisation: U(+-sqrt(6 / (fan_in + fan_out))), where fan_in
    is the patch embedding's (3 x patch area) and fan_out the first stage's width, whatever
    the prompts' own width (the official Swin code uses that one bound for every stage)."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return prompts.uniform_(-bound, bound)


class PromptedWindowAttention(nn.Module):
    """A timm `WindowAttention` whose keys and values start with `prompts` (see the module).

    `norm` is the block's `norm1`: it belongs to the block and is kept here without being
    registered a second time. `prompts` is a (P, C) parameter; several blocks may share one.
    """

    def __init__(self, attn: nn.Module, norm: nn.Module, prompts: nn.Parameter):
        super().__init__()
        if prompts.dim() != 2 or prompts.shape[1] != attn.dim:
            raise ValueError(
                f"prompts must be (P, {attn.dim}) for this block, got {tuple(prompts.shape)}"
            )
        self.attn = attn
        self.prompts = prompts
        self._norm = (norm,)  # a tuple: not a submodule
        self.prompts_visible = True

    @property
    def num_prompts(self) -> int:
        return self.prompts.shape[0]

    def prompt_keys_values(self) -> tuple[Tensor, Tensor]:
        """The prompts' keys and values, each (heads, P, head_dim)."""
        heads = self.attn.num_heads
        tokens = self._norm[0](self.prompts)
        qkv = self.attn.qkv(tokens).reshape(self.num_prompts, 3, heads, -1)
        _, k, v = qkv.permute(1, 2, 0, 3).unbind(0)
        return k, v

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (windows * B, N, C); mask: timm's (windows, N, N) shift mask or None."""
        attn = self.attn
        batch, tokens, _ = x.shape
        heads, p = attn.num_heads, self.num_prompts
        q, k, v = attn.qkv(x).reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        pk, pv = self.prompt_keys_values()
        k = torch.cat([pk.to(k.dtype).unsqueeze(0).expand(batch, -1, -1, -1), k], dim=2)
        v = torch.cat([pv.to(v.dtype).unsqueeze(0).expand(batch, -1, -1, -1), v], dim=2)

        bias = attn._get_rel_pos_bias()  # (1, heads, N, N)
        if mask is not None:  # (windows, N, N): the same for every image of the batch
            bias = bias + mask.unsqueeze(1).to(bias.dtype)
        fill = 0.0 if self.prompts_visible else float("-inf")
        prompt_columns = bias.new_full((*bias.shape[:-1], p), fill)
        bias = torch.cat([prompt_columns, bias], dim=-1)  # (1 or windows, heads, N, P + N)
        if mask is not None:
            windows = mask.shape[0]
            bias = bias.unsqueeze(0).expand(batch // windows, -1, -1, -1, -1)
            bias = bias.reshape(batch, heads, tokens, p + tokens)

        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype),
            dropout_p=attn.attn_drop.p if self.training else 0.0, scale=attn.scale,
        )
        out = out.transpose(1, 2).reshape(batch, tokens, -1)
        return attn.proj_drop(attn.proj(out))


# --- VPT-shallow: prompts as tokens of the stream ------------------------------------------


def _attention_with_prompts(attn: nn.Module, tokens: Tensor, mask: Tensor | None, p: int,
                            batch: int) -> Tensor:
    """timm's window attention over `tokens` = [P prompts; N window tokens] per window.

    tokens: (batch * windows, P + N, C), windows image-major (index b * windows + w);
    mask: the block's (windows, N, N) shift mask or None. The relative-position bias and the
    mask are padded with zeros in the prompt rows and columns: prompts have no position and
    no shift region, every token sees them and they see every token.
    """
    n_windows = tokens.shape[0] // batch
    length = tokens.shape[1]
    heads = attn.num_heads
    qkv = attn.qkv(tokens).reshape(batch, n_windows, length, 3, heads, -1)
    q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (batch, windows, heads, L, d)
    bias = F.pad(attn._get_rel_pos_bias(), (p, 0, p, 0))  # (1, heads, L, L)
    if mask is not None:  # (windows, N, N)
        bias = bias + F.pad(mask, (p, 0, p, 0)).unsqueeze(1).to(bias.dtype)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias.to(q.dtype),
        dropout_p=attn.attn_drop.p if attn.training else 0.0, scale=attn.scale,
    )  # (batch, windows, heads, L, d)
    out = out.permute(0, 1, 3, 2, 4).reshape(batch * n_windows, length, -1)
    return attn.proj_drop(attn.proj(out))


def _windowed_attention(block: nn.Module, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """The attention part of a timm Swin block with prompts: x (B, H, W, C) normalised
    patch tokens, z (B, P, C) normalised prompts; returns (patch output, prompt output).

    Shift, padding, windows and their reversal are timm's. Each window gets the prompts of
    its own image; an image's prompt output is the mean of its copies over its windows."""
    batch, h, w, c = x.shape
    p = z.shape[1]
    wh, ww = block.window_size
    shift = tuple(block.shift_size)
    shifted = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2)) if any(shift) else x
    pad_h, pad_w = (wh - h % wh) % wh, (ww - w % ww) % ww
    shifted = F.pad(shifted, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = shifted.shape[1:3]
    windows = window_partition(shifted, (wh, ww)).view(-1, wh * ww, c)
    n_windows = windows.shape[0] // batch
    tokens = torch.cat([z.repeat_interleave(n_windows, dim=0), windows], dim=1)
    if getattr(block, "dynamic_mask", False):
        mask = block.get_attn_mask(shifted)
    else:
        mask = block.attn_mask
    out = _attention_with_prompts(block.attn, tokens, mask, p, batch)
    prompts = out[:, :p].reshape(batch, n_windows, p, c).mean(dim=1)
    patches = window_reverse(out[:, p:].reshape(-1, wh, ww, c), (wh, ww), hp, wp)
    patches = patches[:, :h, :w, :]
    if any(shift):
        patches = torch.roll(patches, shifts=shift, dims=(1, 2))
    return patches, prompts


def prompted_block(block: nn.Module, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """A timm Swin block run on the patch map x (B, H, W, C) with the prompt tokens z
    (B, P, C) of each image in front; returns both outputs (VPT-shallow).

    As the official prompted block: `norm1` on all tokens; window attention with the
    prompts in every window (`_windowed_attention`); then the residual, `norm2`, the MLP
    and its residual on all tokens, prompts included, each stochastic-depth draw covering
    an image's prompts and patches together."""
    batch, h, w, c = x.shape
    p = z.shape[1]
    seq = torch.cat([z, x.reshape(batch, h * w, c)], dim=1)
    normed = block.norm1(seq)
    patches, prompts = _windowed_attention(
        block, normed[:, p:].reshape(batch, h, w, c), normed[:, :p]
    )
    seq = seq + block.drop_path1(torch.cat([prompts, patches.reshape(batch, h * w, c)], dim=1))
    seq = seq + block.drop_path2(block.mlp(block.norm2(seq)))
    return seq[:, p:].reshape(batch, h, w, c), seq[:, :p]


def merge_prompts(merge: nn.Module, z: Tensor) -> Tensor:
    """Prompt tokens (B, P, C) through a stage's patch merging: four copies side by side
    (the 2 x 2 neighbourhood a prompt does not have) through the frozen LayerNorm(4C) and
    reduction 4C -> 2C, as the official code does; unchanged where there is no merging."""
    if not hasattr(merge, "reduction"):
        return z
    return merge.reduction(merge.norm(torch.cat([z, z, z, z], dim=-1)))


class ShallowPromptEncoder(Encoder):
    """The frozen backbone run with `prompts` (P, C_0) as tokens of the stream (`shared`)."""

    def __init__(self, backbone: SwinBackbone, tasks: Sequence[str], prompts: nn.Parameter):
        super().__init__(backbone, tasks)
        self.prompts = prompts

    def forward_with_prompts(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The stage maps (NCHW, after each merging) and the prompts (B, P, C) each stage's
        first block receives."""
        backbone = self.backbone
        x = backbone.patch_embed(images)
        z = self.prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        maps, stage_prompts = [], []
        for stage in backbone.stages:
            stage_prompts.append(z)
            for block in stage.blocks:
                x, z = prompted_block(block, x, z)
            x = stage.merge(x)
            z = merge_prompts(stage.merge, z)
            maps.append(x.permute(0, 3, 1, 2))
        return maps, stage_prompts

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        maps, _ = self.forward_with_prompts(images)
        return {task: maps for task in self.tasks}
