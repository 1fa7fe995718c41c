"""Visual Prompt Tuning (Jia et al.: "Visual Prompt Tuning", ECCV 2022), the `vpt_shallow`
and `vpt_deep` rows of SPEC 3.2 (baselines of the Polyhistor and MTLoRA tables).

One frozen Swin encoder shared by every task (`shared` mode) and learned prompt tokens.
Trains: the prompts only, plus the decoders (the harness); VPT trains nothing else of the
backbone. Frozen: the whole backbone, LayerNorms, relative-position tables, patch
embedding and merging included.

Prompts in Swin. VPT prepends tokens to a ViT's sequence; Swin's attention is windowed and
its stages change width through patch merging, so the paper's recipe has to be read:

- A prompt acts on the image tokens through the key and value it gives in a block's
  attention (`methods.prompts.PromptedWindowAttention`): its tokens pass through the block's
  own `norm1` and `qkv`, and the queries of *every* window attend to them besides the
  window's own tokens: one set of prompts is seen by all windows of all images, without
  relative-position bias (prompts have no position) and outside the shifted-window mask.
- Prompts produce no outputs: they never pass through the MLP or the patch merging, so no
  prompt crosses a stage (the merging's 2 x 2 neighbourhoods have no place for a token that
  is not on the grid). In VPT-deep the prompt outputs of a layer are discarded anyway, so for
  the image tokens this *is* VPT-deep, block by block.
- `vpt_deep`: a separate set of `num_prompts` prompts in every block of every stage
  (12 sets for Swin-T), each of its block's width.
- `vpt_shallow`: VPT-shallow inserts prompts once, at the input of the first layer. Here:
  one set of `num_prompts` prompts of the first stage's width, seen by the blocks of the
  first stage (the same parameter in both blocks; as in VPT-shallow, where the first layer's
  prompts persist, the second block still sees them). Stages 2-4 run as pre-trained.
- Initialisation: VPT's Xavier-uniform, U(+-sqrt(6 / (3 p^2 + C))) with p the patch size and
  C the prompt width (`methods.prompts.init_prompts`).

Count and default. A set costs `num_prompts` x width. Swin-T's block widths sum to 4,416
(2 x 96, 2 x 192, 6 x 384, 2 x 768), so `vpt_deep` costs 4,416 P and `vpt_shallow` 96 P.
The default P = 200 is, for both rows, the closest count among the prompt lengths VPT itself
searches (1, 5, 10, 50, 100, 200), and it is also the length the two published counts
imply together: they differ by 3.43 - 2.57 = 0.86 M, which in this layout is 4,320 P, so
P = 199. Trainable: `vpt_shallow` 1,965,824 (19,200 prompts + 1,946,624 decoder
parameters; paper 2.57 M), `vpt_deep` 2,829,824 (883,200 + 1,946,624; paper 3.43 M). Both
are 0.60 M below the paper, the same offset, which points to a non-prompt part of the
paper's models about 0.60 M larger than our decoders (our `adapter` is 0.63 M below its row
of the same table too; see `methods.adapter`). No prompt length closes that gap for both rows:
`num_prompts=336` gives `vpt_deep` 3,430,400 (the paper's count) but leaves `vpt_shallow`
0.59 M short and the two rows 1.45 M apart instead of 0.86 M; `vpt_shallow` alone would
need 6,493 prompts of stage 1, far outside what VPT uses (and each window would attend to
over a hundred prompts per token of its own). The default is the same for every backbone:
on `swin_micro` (4 x 4 windows) 200 prompts outnumber a window's tokens 12.5 to 1, against
about 4 to 1 in Swin-T's 7 x 7 windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from benchmark.backbone import SwinBackbone
from benchmark.model import Encoder
from methods.base import Method, freeze, positive_ints
from methods.prompts import PromptedWindowAttention, init_prompts


class VPT(Method):
    """Prompts in the blocks of the first stage (`deep=False`) or in every block (`deep`)."""

    deep: bool = True

    def __init__(self, num_prompts: int = 200, name: str | None = None):
        super().__init__(name or ("vpt_deep" if self.deep else "vpt_shallow"))
        (self.num_prompts,) = positive_ints(num_prompts=num_prompts)

    @property
    def label(self) -> str:
        return f"{self.name} prompts={self.num_prompts}"

    def options(self) -> dict:
        return {"num_prompts": self.num_prompts, "deep": self.deep}

    def build_encoder(self, backbone: SwinBackbone, tasks: Sequence[str]) -> Encoder:
        freeze(backbone)
        fan_in = backbone.patch_embed.proj.weight.shape[1:].numel()  # 3 x patch area

        def new_prompts(block: nn.Module) -> nn.Parameter:
            weight = block.norm1.weight
            data = torch.empty(self.num_prompts, block.dim, device=weight.device,
                               dtype=weight.dtype)
            return nn.Parameter(init_prompts(data, fan_in))

        stages = backbone.stages if self.deep else backbone.stages[:1]
        for stage in stages:
            shared = None if self.deep else new_prompts(stage.blocks[0])
            for block in stage.blocks:
                prompts = new_prompts(block) if shared is None else shared
                block.attn = PromptedWindowAttention(block.attn, block.norm1, prompts)
        return Encoder(backbone, tasks)


class VPTShallow(VPT):
    paper_trainable_m = 2.57
    deep = False


class VPTDeep(VPT):
    paper_trainable_m = 3.43
    deep = True
