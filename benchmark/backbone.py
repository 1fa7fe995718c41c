"""The shared Swin backbone, built from timm, with post-merging stage outputs (protocol §2.1).

timm places each patch merging at the *start* of the next stage; the official Swin code
that MTLoRA builds on places it at the *end* of the stage and hands the merged map to the
decoders. `SwinBackbone` regroups timm's modules into that layout: stage i = its blocks,
then the merging that timm keeps in stage i + 1 (none after the last stage). For Swin-T at
448 px the four outputs are 192x56x56, 384x28x28, 768x14x14 and 768x14x14. timm's final
norm and classifier head are dropped: the decoders never see them, so they are not counted.

The stage loop also carries the *task streams* of protocol §2.3: a stage whose last block
returns `TaskStreams` hands every task its own merged map, while only the shared stream
continues to the next stage (MTLoRA).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig
from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn
from torch import Tensor, nn

from benchmark.errors import UserError

if TYPE_CHECKING:
    from benchmark.config.parts import BackboneSpec

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


def backbone_spec(spec: BackboneSpec | DictConfig) -> BackboneSpec:
    """`spec` as a `BackboneSpec` (a `backbone` config node parsed)."""
    from benchmark.config.parts import BackboneSpec  # the config layer imports the methods

    return BackboneSpec.of(spec)


def _nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2)


def build_swin(
    spec: BackboneSpec | DictConfig, image_size: int, drop_path: float, num_classes: int = 0
):
    """A timm `SwinTransformer` of the architecture named by a `backbone` config."""
    spec = backbone_spec(spec)
    return SwinTransformer(
        img_size=image_size,
        patch_size=spec.patch_size,
        embed_dim=spec.embed_dim,
        depths=tuple(spec.depths),
        num_heads=tuple(spec.num_heads),
        window_size=spec.window_size,
        drop_path_rate=drop_path,
        num_classes=num_classes,
    )


def build_backbone(
    spec: BackboneSpec | DictConfig, image_size: int, drop_path: float, load_weights: bool = True
) -> SwinBackbone:
    """Build the backbone of a `backbone` config and load its pre-trained weights.

    `spec.weights` is a path to a timm or official Microsoft checkpoint, `default` for the
    checkpoint shipped with the suite (only `swin_micro` has one), `none` for a random
    initialisation on purpose, or unset (null): random too, with a warning (real-data runs
    refuse it before they start, see `require_weights`). `load_weights=False` skips loading
    (parameter counting on the meta device).
    """
    spec = backbone_spec(spec)
    swin = build_swin(spec, image_size, drop_path)
    path = resolve_weights(spec)
    if load_weights and path is not None:
        load_checkpoint(swin, path, spec.name)
    elif load_weights and spec.weights is None:
        _warn_once(
            f"warning: backbone {spec.name} starts from random weights (backbone.weights is "
            "unset; give a checkpoint path, or none to silence this)"
        )
    return SwinBackbone(swin)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(message, file=sys.stderr)


def require_weights(spec: BackboneSpec | DictConfig, dataset: str) -> None:
    """Real-data runs start from ImageNet weights (protocol §2.1): stop when none were given,
    naming the checkpoint to obtain, unless `backbone.weights=none` asks for random init."""
    from benchmark.data.registry import trains_from_pretrained

    spec = backbone_spec(spec)
    if spec.weights is not None or not trains_from_pretrained(dataset):
        return
    timm_name, official = spec.timm_checkpoint, spec.official_checkpoint
    where = (
        f"a local copy of the timm checkpoint {timm_name} (its model.safetensors) or of the "
        f"official Microsoft {official}"
        if timm_name
        else "a checkpoint of this architecture"
    )
    raise UserError(
        f"dataset={dataset} trains from pre-trained weights: give backbone.weights=PATH, "
        f"{where}; backbone.weights=none trains from random initialisation on purpose"
    )


def resolve_weights(spec: BackboneSpec | DictConfig) -> Path | None:
    spec = backbone_spec(spec)
    weights = spec.weights
    if weights is None or str(weights).lower() == "none":
        return None
    if str(weights) == "default":
        if not spec.default_weights:
            raise UserError(
                f"backbone {spec.name} has no shipped checkpoint; "
                "give backbone.weights=PATH or backbone.weights=none"
            )
        path = WEIGHTS_DIR / spec.default_weights
        if not path.exists():
            raise UserError(
                f"the shipped checkpoint {path.name} is missing; restore it (git checkout "
                f"benchmark/weights) or give backbone.weights=PATH"
            )
        verify_shipped(path)
        return path
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        raise UserError(
            f"backbone.weights: no file at {path}; give a checkpoint path, default or none"
        )
    return path


def file_sha256(path: Path) -> str:
    """The sha256 of a file, computed once per file version (path, size, mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


_hashes: dict[tuple, str] = {}


def verify_shipped(path: Path) -> None:
    """A shipped checkpoint must be the file its card describes: a changed file would give
    new results under the old name."""
    card = read_weights_card(path.name)
    expected = card.get("sha256")
    if not expected:
        raise UserError(f"the shipped checkpoint {path.name} has no card with its sha256 "
                        f"({path.with_suffix('.json').name}); restore both (git checkout "
                        "benchmark/weights)")
    actual = file_sha256(path)
    if actual != expected:
        raise UserError(
            f"the shipped checkpoint {path} does not match its card (sha256 {actual[:12]}, "
            f"the card says {expected[:12]}); restore it (git checkout benchmark/weights), or "
            "give a checkpoint of your own as backbone.weights=PATH"
        )


def weights_sha256(spec: BackboneSpec | DictConfig) -> str | None:
    """The sha256 of the weights a backbone starts from (None: random initialisation)."""
    path = resolve_weights(spec)
    return None if path is None else file_sha256(path)


# Tensors of timm's model that the harness does not use: their absence is fine.
_UNUSED = ("head.", "norm.")


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint file: safetensors, or a torch file holding a state dict,
    possibly wrapped as `{'model': ...}` (official Swin) or `{'state_dict': ...}`."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a checkpoint, damaged, or pickled objects beyond tensors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"cannot read the checkpoint {path} ({reason[:160]}); expected a state dict in "
            ".safetensors, .pth or .bin (torch.save of tensors only)"
        ) from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"the checkpoint {path} does not hold a state dict of tensors")
    return state


def load_checkpoint(swin: SwinTransformer, path: Path, name: str = "swin") -> None:
    """Load a timm-format or official `{'model': ...}` Swin checkpoint into `swin`.

    timm's own filter maps the official layout (merging at the end of a stage) to timm's and
    resizes relative-position tables when the window differs. The classifier head and the
    final norm are not part of the harness, so their absence is fine. A checkpoint of another
    architecture (a tensor of another shape, one too many or one missing) stops with one
    line naming the first such tensor.
    """
    state = read_state_dict(path)
    modules = dict(swin.named_modules())

    def misfit(detail: str) -> UserError:
        return UserError(f"the checkpoint {path} does not fit backbone {name}: {detail}")

    for key, value in state.items():
        # timm resizes relative-position tables across window sizes, not across head counts
        if key.endswith("relative_position_bias_table"):
            module = modules.get(key[: -len(".relative_position_bias_table")])
            if module is None:
                raise misfit(f"unexpected tensor {key} (a checkpoint of a deeper model?)")
            heads = module.relative_position_bias_table.shape[-1]
            if value.dim() != 2 or value.shape[-1] != heads:
                raise misfit(
                    f"tensor {key} has shape {tuple(value.shape)}, the model has {heads} heads"
                )
    try:
        state = checkpoint_filter_fn(state, swin)
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else ""
        raise misfit(f"{type(err).__name__}: {reason}") from None
    own = swin.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise misfit(
            f"unexpected tensor {unexpected[0]}"
            + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else "")
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise misfit(
                f"tensor {key} has shape {tuple(value.shape)} in the checkpoint and "
                f"{tuple(own[key].shape)} in the model"
            )
    missing = [k for k in own if k not in state and not k.startswith(_UNUSED)]
    if missing:
        raise misfit(
            f"tensor {missing[0]} is missing"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    swin.load_state_dict(state, strict=False)


def read_weights_card(name: str) -> dict:
    """The JSON card (sha256, command, upstream accuracy) beside a shipped checkpoint."""
    card = WEIGHTS_DIR / (Path(name).stem + ".json")
    return json.loads(card.read_text()) if card.exists() else {}
