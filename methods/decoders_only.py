"""Multi-task decoders only (the "MTL - Tuning Decoders Only" row of MTLoRA, CVPR 2024).

The pre-trained Swin encoder is frozen whole (patch embedding, norms, attention, MLPs,
merging, relative-position tables) and shared by the tasks; only the per-task decoders
train. Its trainable count is the decoders' (1,946,624 for Swin-T and the four PASCAL tasks).
"""

from collections.abc import Sequence

from benchmark.backbone import SwinBackbone
from benchmark.method import Encoder, Method
from methods.blocks.inject import freeze


class DecodersOnly(Method):
    paper_trainable_m = 1.94

    def build_encoder(self, backbone: SwinBackbone, tasks: Sequence[str]) -> Encoder:
        freeze(backbone)
        return Encoder(backbone, tasks)
