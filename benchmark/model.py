"""The harness model: the encoder a method returns, and one decoder per task (protocol §2).

The encoder and its modes are the method protocol's (`benchmark.method`); this module builds
the decoders around it, whatever the mode: the decoders never know which produced their input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.backbone import SwinBackbone, build_backbone
from benchmark.method import Encoder, Method

if TYPE_CHECKING:
    from benchmark.config.parts import BackboneSpec
    from benchmark.data import DatasetInfo

# MTLoRA's downsampler widths for Swin-T (embed_dim 96); they scale with embed_dim (protocol §2.2).
DOWNSAMPLER_WIDTHS = (18, 36, 72, 144)


class Decoder(nn.Module):
    """MTLoRA's per-task decoder: downsampler, then an HRNet-style head (protocol §2.2).

    1x1 convolutions (no bias) bring the four stage maps to `widths` channels; they are
    upsampled bilinearly to the largest map and concatenated; a 1x1 conv to 4x the summed
    width, BatchNorm, ReLU and a 1x1 conv to the task's outputs follow; the result is
    upsampled to the image size. Downsampling before upsampling is exact (both are linear
    per pixel) and cheaper than the reverse order.
    """

    def __init__(self, in_dims: Sequence[int], widths: Sequence[int], outputs: int):
        super().__init__()
        self.downsample = nn.ModuleList(
            nn.Conv2d(d, w, kernel_size=1, bias=False) for d, w in zip(in_dims, widths)
        )
        hidden = 4 * sum(widths)
        self.head = nn.Sequential(
            nn.Conv2d(sum(widths), hidden, kernel_size=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, outputs, kernel_size=1),
        )

    def forward(self, maps: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        reduced = [conv(m) for conv, m in zip(self.downsample, maps)]
        target = reduced[0].shape[-2:]
        reduced = [reduced[0]] + [
            F.interpolate(r, size=target, mode="bilinear", align_corners=False)
            for r in reduced[1:]
        ]
        out = self.head(torch.cat(reduced, dim=1))
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


def decoder_widths(embed_dim: int) -> list[int]:
    return [round(w * embed_dim / 96) for w in DOWNSAMPLER_WIDTHS]


def build_decoders(backbone: SwinBackbone, num_outputs: Mapping[str, int]) -> nn.ModuleDict:
    widths = decoder_widths(backbone.embed_dim)
    return nn.ModuleDict(
        {task: Decoder(backbone.out_dims, widths, n) for task, n in num_outputs.items()}
    )


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: Encoder, decoders: nn.ModuleDict):
        super().__init__()
        missing = set(decoders) - set(encoder.tasks)
        if missing:
            raise ValueError(f"the encoder produces no features for {sorted(missing)}")
        self.encoder = encoder
        self.decoders = decoders

    @property
    def tasks(self) -> list[str]:
        return list(self.decoders)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        features = self.encoder(images)
        size = images.shape[-2:]
        return {task: dec(features[task], size) for task, dec in self.decoders.items()}


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def build_model(
    method: Method,
    backbone: BackboneSpec,
    info: DatasetInfo,
    tasks: Sequence[str],
    *,
    drop_path: float,
    load_weights: bool = True,
) -> MultiTaskModel:
    """Backbone (pre-trained) -> method's encoder -> one decoder per task; `drop_path` is the
    budget's stochastic depth."""
    backbone = build_backbone(backbone, info.image_size, drop_path, load_weights)
    encoder = method.build_encoder(backbone, tasks)
    decoders = build_decoders(backbone, {t: info.num_outputs[t] for t in tasks})
    return MultiTaskModel(encoder, decoders)
