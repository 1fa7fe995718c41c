"""BitFit (Ben Zaken et al.: "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", ACL 2022), the `bitfit` row of protocol §3.2.

One frozen Swin encoder shared by every task (`shared` mode) in which only the bias terms
train: the biases of the attention `qkv` and `proj`, of the MLP `fc1` and `fc2`, of every
LayerNorm (blocks, patch merging, patch embedding) and of the patch-embedding convolution.
The patch-merging reductions have no bias. Frozen: every weight, the LayerNorm scales and
the relative-position bias tables (they are position-dependent attention logits, a weight
table rather than a bias term of a layer; "Relative bias" tuning is a separate baseline in
the Polyhistor table). Plus the decoders (the harness).

Count. A block of width d has 11 d biases (qkv 3 d, proj d, fc1 4 d, fc2 d, two norms 2 d);
Swin-T's blocks sum to 48,576, the patch embedding adds 96 + 96 and the merging norms
384 + 768 + 1,536: 51,456 biases, with the decoders (1,946,624) 1,998,080 trainable against
the paper's 2.85 M. The gap (0.85 M) is not made of anything BitFit could mean in Swin:
adding the relative-position tables (23,322) and the LayerNorm scales (23,232) closes 47 K
of it, while the merging reductions (1,548,288) would overshoot; protocol §3.2 discusses
the offset the Polyhistor-paper rows share.
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmark.backbone import SwinBackbone
from benchmark.method import Encoder, Method
from methods.blocks.inject import freeze


class BitFit(Method):
    paper_trainable_m = 2.85

    def __init__(self, name: str | None = None):
        super().__init__(name or "bitfit")

    def build_encoder(self, backbone: SwinBackbone, tasks: Sequence[str]) -> Encoder:
        freeze(backbone)
        for name, p in backbone.named_parameters():
            if name.endswith(".bias"):
                p.requires_grad_(True)
        return Encoder(backbone, tasks)
