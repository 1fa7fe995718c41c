"""Prompt tokens in Swin's windowed attention (Jia et al.: "Visual Prompt Tuning", ECCV 2022).

In a ViT, VPT prepends learned tokens to the sequence of a layer; the patch tokens attend
to them and their own outputs are discarded (VPT-deep replaces them at the next layer).
For the patch tokens, a prompt therefore acts only through the key and value it produces in
that layer: `PromptedWindowAttention` gives exactly that to Swin's windowed attention.

- The prompt tokens (P x C, in the block's input space) go through the block's own `norm1`
  and `qkv`, as a prepended token would; only their keys and values are kept.
- Every window's queries attend to [prompt keys; window keys]: the same P prompts are
  visible from every window (shared, not copied per window), and they are not in any
  window, so the relative-position bias and the shifted-window mask of timm's block are
  padded with zeros for their columns (no position, no region).
- Prompts never produce outputs: nothing is computed for them after the attention, so they
  never reach the MLP, the next block or the patch merging (in VPT-deep their outputs are
  thrown away too).

The frozen attention's own modules are reused as they are (`qkv`, `proj`, the relative
position table, the block's mask, the dropouts); `prompts_visible = False` masks the
prompt columns with -inf, which gives back the frozen block's attention exactly (zero
prompts would not: a softmax over extra keys changes every window's output).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def init_prompts(prompts: Tensor, fan_in: int) -> Tensor:
    """VPT's Xavier-uniform initialisation: U(+-sqrt(6 / (fan_in + C))), where fan_in is
    the patch embedding's (3 x patch area), C the prompt width."""
    bound = math.sqrt(6.0 / (fan_in + prompts.shape[-1]))
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
