"""The harness model: an encoder shaped by a method, and one decoder per task (protocol §2).

Every method plugs in through an *encoder* that maps a batch of images to each task's list
of four stage maps. How the method shares computation between tasks is its encoder mode
(protocol §2.3):

- `shared`: one backbone pass, the same maps for every task (full FT, LoRA, adapters, ...);
- `task_streams`: one pass whose task-specific branches leave the backbone at every stage
  (MTLoRA; the blocks return `TaskStreams`, see `benchmark.backbone`);
- `per_task`: one pass per task with task-conditioned weights (Polyhistor, HyperFormer),
  batched: the images are repeated once per task and the conditioned layers read each
  sample's task from a shared `TaskContext`.

The decoders never know which mode produced their input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.backbone import SwinBackbone, build_backbone

if TYPE_CHECKING:
    from benchmark.config.parts import BackboneSpec
    from benchmark.data import DatasetInfo
    from methods.base import Method

# MTLoRA's downsampler widths for Swin-T (embed_dim 96); they scale with embed_dim (protocol §2.2).
DOWNSAMPLER_WIDTHS = (18, 36, 72, 144)


class Encoder(nn.Module):
    """Runs the backbone once; `mode` is `shared` or `task_streams` (the blocks decide)."""

    modes: tuple[str, ...] = ("shared", "task_streams")

    def __init__(self, backbone: SwinBackbone, tasks: Sequence[str], mode: str = "shared"):
        super().__init__()
        if mode not in self.modes:
            raise ValueError(f"Encoder runs one pass; mode {mode!r} needs PerTaskEncoder")
        self.backbone = backbone
        self.tasks = list(tasks)
        self.mode = mode

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        return self.backbone(images, self.tasks)


class TaskContext:
    """The per-sample task index that task-conditioned layers read during a forward pass."""

    def __init__(self, tasks: Sequence[str]):
        self.tasks = list(tasks)
        self.task_ids: Tensor | None = None

    @contextlib.contextmanager
    def bind(self, task_ids: Tensor) -> Iterator[None]:
        self.task_ids = task_ids
        try:
            yield
        finally:
            self.task_ids = None

    def current(self) -> Tensor:
        if self.task_ids is None:
            raise RuntimeError("a task-conditioned layer ran outside PerTaskEncoder")
        return self.task_ids


class PerTaskEncoder(Encoder):
    """One backbone pass per task, batched across tasks.

    The batch is repeated once per task (task-major), the conditioned layers look up each
    sample's task in `context`, and the output is split back per task. `tasks_per_pass`
    bounds memory: with fewer tasks per pass the tasks are processed in chunks.
    """

    modes: tuple[str, ...] = ("per_task",)

    def __init__(
        self,
        backbone: SwinBackbone,
        tasks: Sequence[str],
        context: TaskContext,
        tasks_per_pass: int | None = None,
    ):
        super().__init__(backbone, tasks, "per_task")
        self.context = context
        self.tasks_per_pass = tasks_per_pass or len(self.tasks)

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        n = images.shape[0]
        out: dict[str, list[Tensor]] = {}
        for start in range(0, len(self.tasks), self.tasks_per_pass):
            stop = min(start + self.tasks_per_pass, len(self.tasks))
            chunk = range(start, stop)
            ids = torch.arange(start, stop, device=images.device).repeat_interleave(n)
            batch = images.repeat(len(chunk), 1, 1, 1)
            with self.context.bind(ids):
                maps = self.backbone(batch, ["all"])["all"]
            for j, t in enumerate(chunk):
                out[self.tasks[t]] = [m[j * n : (j + 1) * n] for m in maps]
        return out


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
