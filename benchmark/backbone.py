"""The shared Swin backbone, built from timm, with post-merging stage outputs (SPEC 2.1).

timm places each patch merging at the *start* of the next stage; the official Swin code
that MTLoRA builds on places it at the *end* of the stage and hands the merged map to the
decoders. `SwinBackbone` regroups timm's modules into that layout: stage i = its blocks,
then the merging that timm keeps in stage i + 1 (none after the last stage). For Swin-T at
448 px the four outputs are 192x56x56, 384x28x28, 768x14x14 and 768x14x14. timm's final
norm and classifier head are dropped: the decoders never see them, so they are not counted.

The stage loop also carries the *task streams* of SPEC 2.3: a stage whose last block
returns `TaskStreams` hands every task its own merged map, while only the shared stream
continues to the next stage (MTLoRA).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn
from torch import Tensor, nn

from benchmark.errors import UserError

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass
class TaskStreams:
    """What a task-stream block returns: the shared stream and one stream per task (NHWC)."""

    shared: Tensor
    tasks: dict[str, Tensor] = field(default_factory=dict)


class SwinStage(nn.Module):
    def __init__(self, blocks: nn.Sequential, merge: nn.Module):
        super().__init__()
        self.blocks = blocks
        self.merge = merge


class SwinBackbone(nn.Module):
    """Patch embedding and four stages; `forward` returns each task's list of stage maps."""

    def __init__(self, swin: SwinTransformer):
        super().__init__()
        self.patch_embed = swin.patch_embed
        layers = list(swin.layers)
        merges = [layer.downsample for layer in layers[1:]] + [nn.Identity()]
        self.stages = nn.ModuleList(
            SwinStage(layer.blocks, merge) for layer, merge in zip(layers, merges)
        )
        self.embed_dim = swin.embed_dim
        # Width of each stage's output after its merging (the decoders' input widths).
        self.out_dims = [
            merge.out_dim if hasattr(merge, "out_dim") else layer.blocks[-1].dim
            for layer, merge in zip(layers, merges)
        ]

    def forward(self, images: Tensor, tasks: Sequence[str]) -> dict[str, list[Tensor]]:
        x = self.patch_embed(images)  # NHWC
        features: dict[str, list[Tensor]] = {task: [] for task in tasks}
        for stage in self.stages:
            y = stage.blocks(x)
            if isinstance(y, TaskStreams):
                for task in tasks:
                    features[task].append(_nchw(stage.merge(y.tasks[task])))
                x = stage.merge(y.shared)
            else:
                x = stage.merge(y)
                shared = _nchw(x)
                for task in tasks:
                    features[task].append(shared)
        return features

    def blocks(self) -> list[nn.Module]:
        return [block for stage in self.stages for block in stage.blocks]


def _nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2)


def build_swin(cfg: DictConfig, image_size: int, drop_path: float, num_classes: int = 0):
    """A timm `SwinTransformer` of the architecture named by a `backbone` config."""
    return SwinTransformer(
        img_size=image_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depths=tuple(cfg.depths),
        num_heads=tuple(cfg.num_heads),
        window_size=cfg.window_size,
        drop_path_rate=drop_path,
        num_classes=num_classes,
    )


def build_backbone(
    cfg: DictConfig, image_size: int, drop_path: float, load_weights: bool = True
) -> SwinBackbone:
    """Build the backbone of a `backbone` config and load its pre-trained weights.

    `cfg.weights` is a path to a timm or official Microsoft checkpoint, `default` for the
    checkpoint shipped with the suite (only `swin_micro` has one), or `none` for a random
    initialisation. `load_weights=False` skips loading (parameter counting on the meta device).
    """
    swin = build_swin(cfg, image_size, drop_path)
    path = resolve_weights(cfg)
    if load_weights and path is not None:
        load_checkpoint(swin, path)
    return SwinBackbone(swin)


def resolve_weights(cfg: DictConfig) -> Path | None:
    weights = cfg.get("weights")
    if weights is None or str(weights).lower() == "none":
        return None
    if str(weights) == "default":
        if not cfg.get("default_weights"):
            raise UserError(
                f"backbone {cfg.name} has no shipped checkpoint; "
                "give backbone.weights=PATH or backbone.weights=none"
            )
        path = WEIGHTS_DIR / cfg.default_weights
        if not path.exists():
            raise UserError(
                f"the shipped checkpoint {path.name} is missing; regenerate it with "
                "`python -m benchmark.pretrain`"
            )
        return path
    path = Path(str(weights)).expanduser()
    if not path.exists():
        raise UserError(
            f"backbone.weights: no file at {path}; give a checkpoint path, default or none"
        )
    return path


def load_checkpoint(swin: SwinTransformer, path: Path) -> None:
    """Load a timm-format or official `{'model': ...}` Swin checkpoint into `swin`.

    timm's own filter maps the official layout (merging at the end of a stage) to timm's and
    resizes relative-position tables when the window differs. The classifier head and the
    final norm are not part of the harness, so their absence is fine; anything else missing
    means the checkpoint belongs to another architecture.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint_filter_fn(state, swin)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    result = swin.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(("head.", "norm."))]
    if missing:
        raise ValueError(
            f"checkpoint {path} does not fit backbone: {len(missing)} missing tensors, "
            f"e.g. {missing[0]}"
        )


def read_weights_card(name: str) -> dict:
    """The JSON card (sha256, command, upstream accuracy) beside a shipped checkpoint."""
    card = WEIGHTS_DIR / (Path(name).stem + ".json")
    return json.loads(card.read_text()) if card.exists() else {}
