"""Visual Prompt Tuning (Jia et al.: "Visual Prompt Tuning", ECCV 2022), the `vpt_shallow`
and `vpt_deep` rows of protocol §3.2 (baselines of the Polyhistor and MTLoRA tables).

One frozen Swin encoder shared by every task (`shared` mode) and learned prompt tokens, as
the official code's prompted Swin builds them. Trains: the prompts only, plus the decoders
(the harness). Frozen: the whole backbone, LayerNorms, relative-position tables, patch
embedding and merging included (the official code freezes every backbone parameter whose
name lacks "prompt").

How the official prompted Swin block treats P prompt tokens Z in front of the patch tokens
(both variants): `norm1` on all tokens; the same P (normalised) prompts are put in front of
every window's 49 tokens; window attention with the relative-position bias and the shift
mask padded with zeros in the prompt rows and columns (prompts have no position and no
shift region: every token sees them, they see every token); an image's prompt output is
the mean of its copies over its windows; then the residual, `norm2` and the MLP on all
tokens, prompts included.

- `vpt_deep`: a separate set of `num_prompts` prompts in every block of every stage
  (12 sets for Swin-T), each of its block's width. Before each block the official code
  throws the incoming prompts away and puts that block's own set in, so a block's prompt
  outputs reach nothing but the prompt outputs of the last block, which the official
  classifier pools and a dense decoder never sees. For the patch tokens the prompts
  therefore act only through the keys and values they give in their block's attention:
  `methods.blocks.prompts.PromptedWindowAttention` computes exactly that, and nothing for the
  prompts after it (the official block's patch outputs, with the same weights).
- `vpt_shallow`: one set of `num_prompts` prompts of the first stage's width, put in front
  of the patch tokens after the patch embedding (no position embedding, no patch-embedding
  norm). They are tokens of the stream from then on (`methods.blocks.prompts.prompted_block`): each
  block's prompt outputs are the next block's prompts, through all blocks of all stages.
  At a patch merging the prompts cross as four copies side by side through the frozen
  merging norm and reduction, C -> 4C -> 2C (`methods.blocks.prompts.merge_prompts`): the official
  code's path (the VPT paper says the prompts are ignored at the merging; the code passes
  them through it, and we follow the code). The decoders get the patch tokens of each stage
  after its merging; the prompts are never decoded.
- Batch pairing (`vpt_shallow`; one difference from the official code). The official block
  lists the windows image by image (index b * windows + w) but builds the prompt copies, and
  averages them back, window by window (image = index mod B), so with more than one image in
  a batch a window sees the prompts of another image and an image's prompt output mixes
  windows of several images: the samples of a batch are coupled, and the result depends on
  the batch size. We pair each window with its own image's prompts and average each image's
  prompts over its own windows, so every image is computed as if it were alone (the official
  result at batch size 1). In `vpt_deep` the fresh prompts are the same for every image, so
  the pairing does not change anything that reaches the decoders.
- Initialisation: the official Xavier-uniform bound for every prompt set,
  U(+-sqrt(6 / (3 p^2 + C_0))) with p the patch size and C_0 the first stage's width, also
  for the wider prompts of the later stages (Swin-T: sqrt(6 / 144) = 0.204 everywhere;
  `methods.blocks.prompts.init_prompts`).

Choices the official code leaves open for dense prediction, or where we differ:

- One prompt set shared by the tasks (one backbone pass per image), not one set per task.
- Stochastic depth and dropout of the backbone run as for every other method of the
  protocol (the official code puts the whole backbone in eval mode while tuning prompts).
  Prompt dropout: none (the official default and the value its runs use).
- The prompt projection the official code exposes is an identity that its Swin forward
  never applies: there is none here.

Count and default. A set costs `num_prompts` x width. Swin-T's block widths sum to 4,416
(2 x 96, 2 x 192, 6 x 384, 2 x 768), so `vpt_deep` costs 4,416 P and `vpt_shallow` 96 P
(the prompts that cross a merging are computed from the first stage's, not learned anew).
The default P = 200 is among the lengths VPT searches (1, 5, 10, 50, 100, 200), and P = 200
shared (or 50 per task, four sets) is the one length that the paper's two VPT counts imply
together (with the offset the Polyhistor-paper rows share, protocol §3.2). Trainable for Swin-T on
PASCAL: `vpt_shallow` 1,965,824 (19,200 prompts + 1,946,624 decoder parameters; paper
2.57 M), `vpt_deep` 2,829,824 (883,200 + 1,946,624; paper 3.43 M).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from benchmark.backbone import SwinBackbone
from benchmark.method import Encoder, Method
from methods.blocks.inject import freeze
from methods.blocks.options import positive_ints
from methods.blocks.prompts import PromptedWindowAttention, ShallowPromptEncoder, init_prompts


class VPT(Method):
    """Prompts at the input, carried through the network (`deep=False`), or a fresh set in
    every block (`deep`)."""

    deep: bool = True

    def __init__(self, num_prompts: int = 200, name: str | None = None):
        super().__init__(name or ("vpt_deep" if self.deep else "vpt_shallow"))
        (self.num_prompts,) = positive_ints(num_prompts=num_prompts)

    @property
    def label(self) -> str:
        return f"{self.name} prompts={self.num_prompts}"

    def build_encoder(self, backbone: SwinBackbone, tasks: Sequence[str]) -> Encoder:
        freeze(backbone)
        proj = backbone.patch_embed.proj.weight
        fan_in, first_width = proj.shape[1:].numel(), proj.shape[0]  # 3 x patch area, C_0

        def new_prompts(width: int) -> nn.Parameter:
            data = torch.empty(self.num_prompts, width, device=proj.device, dtype=proj.dtype)
            return nn.Parameter(init_prompts(data, fan_in, first_width))

        if not self.deep:
            return ShallowPromptEncoder(backbone, tasks, new_prompts(first_width))
        for block in backbone.blocks():
            block.attn = PromptedWindowAttention(block.attn, block.norm1, new_prompts(block.dim))
        return Encoder(backbone, tasks)


class VPTShallow(VPT):
    paper_trainable_m = 2.57
    deep = False


class VPTDeep(VPT):
    paper_trainable_m = 3.43
    deep = True
