"""A composed configuration parsed once into typed parts, each handed to the layer that
needs it and to no other: the dataset (`DataSpec`, for `benchmark.data`), the backbone
(`BackboneSpec`, for `benchmark.backbone` and `benchmark.model`), the training budget
(`BudgetSpec`, for `benchmark.train`), the method's options (`MethodSpec`), how the run
executes (`Execution`) and what names the run (`RunIdentity`, for `benchmark.records`).

`parse(cfg)` builds a `RunSpec` of them after `benchmark.config.checks.validate`. Each part
keeps its group resolved as a plain dict (`group`): what the record copies and what the run
key hashes, exactly as the configuration gave it. The rules of the key live here too:
`NOT_IN_KEY` (keys that locate files) and `ADDED_OPTIONS` (options added to a group after
records of it existed, left out of the key at their default).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from benchmark.config.execution import Execution
from benchmark.config.schema import cadence

# Keys that locate files rather than define the experiment: never in a run's key.
NOT_IN_KEY = frozenset({"root", "cache_dir"})
# Options added to a config group after records of it existed, with their default: at the
# default they are left out of the key, so that a run keeps the key (and finds the record)
# it had before the option existed; set to anything else they enter it. A new option of a
# group (a method's included) whose default must not change existing keys gets a line here.
ADDED_OPTIONS: dict[str, dict[str, object]] = {
    "method": {"dora": False},
    "budget": {"decay_position_tables": False},
    "dataset": {"augment": "clean"},
}
KEY_GROUPS = ("method", "dataset", "backbone", "budget")


def _group(node) -> dict:
    """A config group as a plain dict, interpolations resolved."""
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node)


def key_part(group: str, values: dict) -> dict:
    """What of `group`'s resolved `values` enters a run's key."""
    added = ADDED_OPTIONS.get(group, {})
    return {
        k: v for k, v in values.items()
        if k not in NOT_IN_KEY and not (k in added and v == added[k])
    }


class _Part:
    """A config group as a frozen dataclass: its fields read from the group's keys (a list
    becomes a tuple; a key the group lacks keeps the field's default), the group itself kept
    resolved in `group`."""

    @classmethod
    def of(cls, node):
        """`node` (a config group) parsed; a part of this kind as it is."""
        if isinstance(node, cls):
            return node
        values = _group(node)
        given = {
            f.name: tuple(values[f.name]) if isinstance(values[f.name], list) else values[f.name]
            for f in fields(cls) if f.name != "group" and f.name in values
        }
        return cls(**given, group=values)


@dataclass(frozen=True)
class DataSpec(_Part):
    """The `dataset` group: which data, at what size, from where."""

    name: str | None = None
    tasks: tuple[str, ...] = ()
    image_size: int | None = None
    eval_resolution: str | None = None  # null: the input size (the synthetic data)
    num_classes: int | None = None
    train_size: int | None = None
    val_size: int | None = None
    seed: int | None = None  # which synthetic scenes
    root: str | None = None
    cache_dir: str | None = None
    normals_y: str = "down"
    augment: str = "clean"
    group: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if isinstance(self.tasks, str):  # dataset.tasks=semseg: a list of one task
            object.__setattr__(self, "tasks", (self.tasks,))


@dataclass(frozen=True)
class BackboneSpec(_Part):
    """The `backbone` group: the Swin architecture and the weights it starts from."""

    name: str | None = None
    embed_dim: int | None = None
    depths: tuple[int, ...] = ()
    num_heads: tuple[int, ...] = ()
    window_size: int | None = None
    patch_size: int | None = None
    weights: str | None = None  # a path, default (the shipped checkpoint), none, or null
    default_weights: str | None = None
    timm_checkpoint: str | None = None
    official_checkpoint: str | None = None
    group: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class BudgetSpec(_Part):
    """The `budget` group: the training recipe. `group` holds it as given, for the precision
    rules (`benchmark.precision`), which also read the deprecated `amp`."""

    epochs: int = 1
    batch_size: int = 1
    lr: float = 0.0
    name: str | None = None
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    weight_decay: float = 0.0
    clip_grad: float | None = None
    drop_path: float = 0.0
    decay_position_tables: bool = False
    train_batches: int | None = None  # a cap on the steps of an epoch
    val_images: int | None = None  # a cap on the images evaluated
    group: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class MethodSpec:
    """The `method` group: its name, its options (resolved) and the node hydra instantiates."""

    name: str
    options: dict
    node: DictConfig = field(repr=False, compare=False)

    @classmethod
    def of(cls, node: DictConfig) -> MethodSpec:
        return cls(name=node.name, options=_group(node), node=node)


@dataclass(frozen=True)
class RunIdentity:
    """What names a run: the seed and, per group, what of it enters the run key (before the
    budget's precision spelling and the weights' sha256, which `benchmark.records` adds)."""

    seed: int
    groups: dict[str, dict]


@dataclass(frozen=True)
class RunSpec:
    """One run's configuration, parsed: the parts and the top-level keys of one run."""

    method: MethodSpec
    data: DataSpec
    backbone: BackboneSpec
    budget: BudgetSpec
    execution: Execution
    identity: RunIdentity
    results_dir: str
    force: bool
    keep_checkpoints: bool
    checkpoint_every: tuple[str, float] | None  # `cadence` of the key
    device: str
    progress: bool
    config: dict = field(repr=False)  # the whole configuration, resolved (the record's copy)
    yaml: str = field(repr=False)  # the whole configuration as composed (`config.yaml`)
    source: DictConfig = field(repr=False, compare=False)

    @property
    def seed(self) -> int:
        return self.identity.seed

    def with_method(self, method: DictConfig, **top: Any) -> RunSpec:
        """The same setting with another method (and top-level keys `top` changed)."""
        cfg = copy.deepcopy(self.source)
        cfg.method = method
        for key, value in top.items():
            cfg[key] = value
        return parse(cfg)


def parse(cfg: DictConfig | RunSpec) -> RunSpec:
    """A composed, validated configuration as its typed parts (a `RunSpec` as it is)."""
    if isinstance(cfg, RunSpec):
        return cfg
    groups = {group: _group(cfg[group]) for group in KEY_GROUPS}
    return RunSpec(
        method=MethodSpec(name=cfg.method.name, options=groups["method"], node=cfg.method),
        data=DataSpec.of(groups["dataset"]),
        backbone=BackboneSpec.of(groups["backbone"]),
        budget=BudgetSpec.of(groups["budget"]),
        execution=Execution.from_config(cfg),
        identity=RunIdentity(
            seed=cfg.seed, groups={g: key_part(g, v) for g, v in groups.items()}
        ),
        results_dir=str(cfg.results_dir),
        force=bool(cfg.force),
        keep_checkpoints=bool(cfg.keep_checkpoints),
        checkpoint_every=cadence(cfg.checkpoint_every),
        device=str(cfg.device),
        progress=bool(cfg.progress),
        config=OmegaConf.to_container(cfg, resolve=True),
        yaml=OmegaConf.to_yaml(cfg),
        source=cfg,
    )
