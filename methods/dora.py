"""DoRA shared by all tasks (Liu et al.: "DoRA: Weight-Decomposed Low-Rank Adaptation",
ICML 2024), the weight-decomposed counterpart of the `lora` baseline.

One frozen Swin encoder shared by every task; each targeted linear of every block becomes
(`methods.blocks.lowrank.DoRALinear`)

    y = m / ||W + s B A||_c  *  (W x + s B A dropout(x))  +  b

with W and b frozen. The pre-trained weight is decomposed into a magnitude and a direction:
the direction W + s B A is updated by LoRA (A Kaiming-uniform with a = sqrt(5), B zero) and
normalised per output feature (the paper's column-wise norm: one norm for each output's
weights, a row of PyTorch's (out, in) weight), and the trainable magnitude m, one scalar per
output feature, is initialised to ||W||_c, so with B = 0 the layer is exactly the frozen one.

Interpretations:

- The norm ||W + s B A||_c is detached from the gradient graph (treated as a constant), the
  implementation the paper recommends in Sec. 4.3 to save training memory.
- The bias is added after the rescaling (it is not part of the decomposed weight).
- Dropout (`dropout_style`, default `peft`): as HF peft and the DoRA authors' code compute
  the layer while training, y = W x + b + (r - 1) W x~ + r s B A x~ with r = m / ||W + s B
  A||_c and x~ = dropout(x): the frozen output W x + b is kept whole and the rescaling's
  share of the frozen path reads the dropped input like the update. `dropout_style=update`
  gives instead y = r (W x + s B A x~) + b (dropout on the low-rank input only, as in
  `lora`; the frozen product reads the un-dropped input), which is what this method did
  before and what MTLoRA's `dora=true` keeps. The two agree in eval mode and without
  dropout (then both are exactly peft's eval-mode output).

Trains: A, B and the magnitude vectors, plus the decoders (the harness). Frozen: everything
else in the backbone, as in `lora`.

Options and defaults: those of `lora` (`rank` 35, `targets` [qkv, proj], `scale` 4.0 or
`alpha`, `dropout` 0.05), so that the two rows differ only by the decomposition. No count
is published for DoRA on this protocol (the DoRA paper compares against LoRA at equal rank,
where the magnitudes add a fraction of a percent), so `paper_trainable_m` is empty. For
Swin-T on PASCAL the magnitudes add one entry per output of qkv (3C) and proj (C) in every
block, 4 x 4,416 = 17,664: 927,360 (LoRA) + 17,664 + 1,946,624 (decoders) = 2,891,648
trainable, 17,664 (0.6 %) above `lora`'s 2,873,984 and 0.76 % above the 2.87 M published
for the LoRA baseline. (Rank 34 would give 2,865,152, 0.16 % below it, but would compare
DoRA with LoRA at different ranks.)

`merge()` (`methods.blocks.lowrank.merge_lora`) folds each layer into its frozen weight for
inference, W <- m / ||W + s B A||_c * (W + s B A).
"""

from __future__ import annotations

from functools import partial

from methods.blocks.lowrank import DoRALinear
from methods.blocks.options import choice
from methods.lora import LoRA


class DoRA(LoRA):
    """LoRA's options (`**options`: rank, targets, scale, alpha, dropout) and `dropout_style`."""

    paper_trainable_m = None  # no count published on this protocol (see the docstring)
    layer = DoRALinear

    def __init__(self, name: str = "dora", dropout_style: str = "peft", **options):
        super().__init__(name, **options)
        self.dropout_style = choice("dropout_style", dropout_style, DoRALinear.DROPOUT_STYLES)
        self.layer = partial(DoRALinear, dropout_style=dropout_style)

    @property
    def label(self) -> str:
        return "dora" + super().label.removeprefix("lora")
