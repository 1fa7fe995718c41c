"""The configuration's keys: each one's type and range, checked before anything trains.

Every key of the composed configuration (`conf/config.yaml` and its groups) has one line in
`SCHEMA`; a method's options are checked against its constructor's annotations
(`method_keys`), so a new method needs no line here. `check_config` runs for every point of
a sweep before the first run starts and raises `UserError` with one line naming the key, the
value and what it must be.

Adding a key: one line in `SCHEMA`, e.g. `"budget.label_smoothing": Float(ge=0, lt=1)`.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
import tempfile
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from benchmark.errors import UserError

NAME = r"[A-Za-z0-9_][A-Za-z0-9_.+=-]*"  # a name that is safe as a path component


@dataclass(frozen=True)
class Key:
    """A key's type and range. `null` lets the key be null (unset)."""

    null: bool = False

    def check(self, key: str, value: object) -> None:
        if value is None:
            if not self.null:
                raise UserError(f"{key} must be {self.describe()}, got null")
            return
        if not self.valid(value):
            raise UserError(f"{key} must be {self.describe()}{self._or_null()}, got {value!r}")

    def _or_null(self) -> str:
        return " or null" if self.null else ""

    def valid(self, value: object) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def bad_values(self) -> list[str]:
        """Override texts that this key refuses (for the tests)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Bool(Key):
    def valid(self, value):
        return isinstance(value, bool)

    def describe(self):
        return "true or false"

    def bad_values(self):
        return ["no", "1"]


def _bounds(ge, gt, le, lt) -> str:
    parts = [f">= {ge}" if ge is not None else "", f"> {gt}" if gt is not None else "",
             f"<= {le}" if le is not None else "", f"< {lt}" if lt is not None else ""]
    return " and ".join(p for p in parts if p)


def _in_bounds(value, ge, gt, le, lt) -> bool:
    return ((ge is None or value >= ge) and (gt is None or value > gt)
            and (le is None or value <= le) and (lt is None or value < lt))


def _below(ge, gt):
    if ge is not None:
        return ge - 1
    return None if gt is None else gt - 1


@dataclass(frozen=True)
class Int(Key):
    ge: int | None = None
    le: int | None = None

    def valid(self, value):
        return (isinstance(value, int) and not isinstance(value, bool)
                and _in_bounds(value, self.ge, None, self.le, None))

    def describe(self):
        bounds = _bounds(self.ge, None, self.le, None)
        return "a whole number" + (f" {bounds}" if bounds else "")

    def bad_values(self):
        below = _below(self.ge, None)
        return ["abc", "1.5", *([str(below)] if below is not None else [])]


@dataclass(frozen=True)
class Float(Key):
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def valid(self, value):
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value) and _in_bounds(value, self.ge, self.gt, self.le, self.lt))

    def describe(self):
        bounds = _bounds(self.ge, self.gt, self.le, self.lt)
        return "a finite number" + (f" {bounds}" if bounds else "")

    def bad_values(self):
        below = _below(self.ge, self.gt)
        above = self.le + 1 if self.le is not None else (self.lt + 1 if self.lt else None)
        extra = [str(v) for v in (below, above) if v is not None]
        return ["abc", "nan", *extra]


@dataclass(frozen=True)
class Str(Key):
    pattern: str | None = None  # the whole value must match
    choices: tuple[str, ...] = ()
    what: str = "text"

    def valid(self, value):
        if not isinstance(value, str) or not value:
            return False
        if self.choices and value not in self.choices:
            return False
        return self.pattern is None or re.fullmatch(self.pattern, value) is not None

    def describe(self):
        if self.choices:
            return "one of " + ", ".join(self.choices)
        return self.what

    def bad_values(self):
        return ["''", "[1,2]", *(["'a/b'"] if self.pattern else []),
                *(["nope"] if self.choices else [])]


@dataclass(frozen=True)
class Ints(Key):
    """A list of whole numbers >= `ge`."""

    ge: int = 1

    def valid(self, value):
        return isinstance(value, list | tuple) and bool(value) and all(
            Int(ge=self.ge).valid(v) for v in value)

    def describe(self):
        return f"a list of whole numbers >= {self.ge}, e.g. [2,2,6,2]"

    def bad_values(self):
        return ["3", "[2,abc]", "[]"]


@dataclass(frozen=True)
class Texts(Key):
    """A non-empty list of non-empty texts."""

    def valid(self, value):
        return isinstance(value, list | tuple) and bool(value) and all(
            isinstance(v, str) and v for v in value)

    def describe(self):
        return "a list of names, e.g. [qkv,proj]"

    def bad_values(self):
        return ["[]", "[1,2]"]


@dataclass(frozen=True)
class Tasks(Key):
    """`dataset.tasks`: distinct task names; one name alone is a list of one."""

    def check(self, key, value):
        from benchmark.tasks import TASKS

        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list | tuple) or not names:
            raise UserError(f"{key} must name tasks, e.g. {key}=[semseg,sal], got {value!r}")
        for task in names:
            if task not in TASKS:
                raise UserError(
                    f"unknown task {task!r} in {key}; choose from {', '.join(TASKS)} "
                    f"(several as {key}=[semseg,sal])"
                )
        if len(set(names)) != len(names):
            raise UserError(f"{key} must name distinct tasks, got {list(names)}")

    def bad_values(self):
        return ["[semseg,foo]", "[]", "[sal,sal]", "s"]


UNITS = {"s": 1, "min": 60, "h": 3600}


@dataclass(frozen=True)
class Cadence(Key):
    """Epochs (a whole number; 0: never) or training time between checkpoints ("10min")."""

    def valid(self, value):
        return cadence(value) is not None

    def describe(self):
        return "a number of epochs (0: never) or a training time such as 10min, 30s or 1h"

    def bad_values(self):
        return ["-1", "abc", "0min", "1.5"]


def cadence(value: object) -> tuple[str, float] | None:
    """("epochs", n) or ("seconds", s) for a valid `checkpoint_every`, else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return ("epochs", value) if value >= 0 else None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(s|min|h)\s*", value)
        if match and float(match.group(1)) > 0:
            return "seconds", float(match.group(1)) * UNITS[match.group(2)]
    return None


@dataclass(frozen=True)
class Either(Key):
    """A value that one of `keys` accepts."""

    keys: tuple[Key, ...] = ()

    def valid(self, value):
        return any(k.valid(value) for k in self.keys)

    def describe(self):
        return " or ".join(k.describe() for k in self.keys)

    def bad_values(self):
        return ["[1,2]"]


PATH = Str(what="a path")
NAME_KEY = Str(pattern=NAME, what="a name of letters, digits and _.+=- (no / or spaces)")

# Every key of the composed configuration. Group keys hold for every choice of the group
# (a key only some choices have appears in those).
SCHEMA: dict[str, Key] = {
    "seed": Int(ge=0),
    "results_dir": PATH,
    "force": Bool(),
    "checkpoint_every": Cadence(),
    "keep_checkpoints": Bool(),
    "device": Str(pattern=r"auto|cpu|mps|cuda(:\d+)?", what="auto, cpu, cuda or cuda:N"),
    "progress": Bool(),
    "compile": Bool(),
    "channels_last": Bool(),
    "data_on_gpu": Float(ge=0, le=1),
    "prefetch": Int(ge=0),
    "fused_attn": Bool(),
    "eval_every": Int(ge=0),
    "method.name": NAME_KEY,
    "method._target_": Str(pattern=r"[A-Za-z_][\w.]*", what="package.module.Class"),
    "dataset.name": NAME_KEY,
    "dataset.tasks": Tasks(),
    "dataset.image_size": Int(ge=1),
    "dataset.train_size": Int(ge=1),
    "dataset.val_size": Int(ge=1),
    "dataset.seed": Int(ge=0),
    "dataset.cache_dir": Str(null=True, what="a path"),
    "dataset.root": Str(null=True, what="a path"),
    "dataset.num_classes": Int(ge=1),
    "dataset.eval_resolution": Either(keys=(Int(ge=1), Str(choices=("original",)))),
    "dataset.normals_y": Str(choices=("down", "up")),
    "dataset.augment": Str(choices=("official", "clean")),
    "backbone.name": NAME_KEY,
    "backbone.embed_dim": Int(ge=1),
    "backbone.depths": Ints(ge=1),
    "backbone.num_heads": Ints(ge=1),
    "backbone.window_size": Int(ge=1),
    "backbone.patch_size": Int(ge=1),
    "backbone.weights": Str(null=True, what="a checkpoint path, default or none"),
    "backbone.default_weights": Str(null=True, what="a file name under benchmark/weights"),
    "backbone.timm_checkpoint": Str(null=True),
    "backbone.official_checkpoint": Str(null=True),
    "budget.name": NAME_KEY,
    "budget.epochs": Int(ge=1),
    "budget.batch_size": Int(ge=1),
    "budget.lr": Float(gt=0),
    "budget.warmup_lr": Float(ge=0),
    "budget.min_lr": Float(ge=0),
    "budget.warmup_epochs": Float(ge=0),
    "budget.weight_decay": Float(ge=0),
    "budget.clip_grad": Float(gt=0),
    "budget.drop_path": Float(ge=0, lt=1),
    "budget.decay_position_tables": Bool(),
    "budget.precision": Str(choices=("bf16", "fp16", "fp32")),
    "budget.eval_precision": Str(choices=("bf16", "fp16", "fp32")),
    "budget.amp": Bool(null=True),  # deprecated alias of precision
    "budget.train_batches": Int(ge=1, null=True),
    "budget.val_images": Int(ge=1, null=True),
}


def leaf_keys(cfg: DictConfig, prefix: str = "") -> dict[str, object]:
    """The dotted keys of `cfg`'s values (lists are values), resolved."""
    out: dict[str, object] = {}
    for key in cfg:
        if key == "defaults":
            continue
        node = cfg._get_node(key)
        name = f"{prefix}{key}"
        if isinstance(node, DictConfig):
            out.update(leaf_keys(node, f"{name}."))
        elif OmegaConf.is_missing(cfg, key):
            out[name] = "???"
        else:
            value = cfg[key]
            out[name] = list(value) if isinstance(value, ListConfig) else value
    return out


# -- method options, from the method's own declaration -------------------------------------


def _key_for(annotation) -> Key | None:
    """The key of a constructor annotation (bool, int, float, str, a sequence of str, each
    possibly `| None`); None for what cannot be checked from the type alone."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        inner = _key_for(rest[0]) if len(rest) == 1 else None
        return None if inner is None else type(inner)(**{**inner.__dict__, "null": True})
    if annotation is bool:
        return Bool()
    if annotation is int:
        return Int()
    if annotation is float:
        return Float()
    if annotation is str:
        return Str()
    if origin is not None and issubclass(origin, Sequence) and args and args[0] is str:
        return Texts()
    return None


def method_keys(target: str) -> dict[str, Key | None]:
    """The options of the method class `target`, each with the key its constructor
    annotation declares (None: not annotated); `**options` is followed to the base class."""
    from hydra.utils import get_class

    try:
        cls = get_class(target)
    except Exception:  # noqa: BLE001 (hydra raises several kinds; instantiation says why)
        return {}
    keys: dict[str, Key | None] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        try:
            hints = typing.get_type_hints(klass.__init__)
        except Exception:  # noqa: BLE001 (an annotation that does not resolve: no check)
            hints = {}
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        for p in params:
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            keys.setdefault(p.name, _key_for(hints[p.name]) if p.name in hints else None)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return keys


# -- checking a composed configuration -------------------------------------------------------


def normalise(cfg: DictConfig) -> None:
    """Forms a user may write for convenience, made canonical: `dataset.tasks=semseg`."""
    tasks = cfg.dataset.get("tasks")
    if isinstance(tasks, str):
        with open_dict(cfg):
            cfg.dataset.tasks = [tasks]


def check_config(cfg: DictConfig) -> None:
    """Check every key of a composed configuration against `SCHEMA` (method options
    against the method's constructor), then the rules that join several keys."""
    normalise(cfg)
    values = leaf_keys(cfg)
    target = values.get("method._target_")
    options = method_keys(target) if isinstance(target, str) else {}
    for key, value in values.items():
        if key in SCHEMA:
            SCHEMA[key].check(key, value)
        elif key.startswith("method."):
            spec = options.get(key.split(".", 1)[1])
            if spec is not None:
                spec.check(key, value)
    check_joint(cfg)


def backbone_multiple(backbone: DictConfig) -> int:
    """Image sizes `backbone` takes are multiples of this: the patch size times 2 per
    patch merging, so that every stage's map has whole patches, unpadded."""
    return int(backbone.patch_size) * 2 ** (len(backbone.depths) - 1)


def check_joint(cfg: DictConfig) -> None:
    backbone, dataset, budget = cfg.backbone, cfg.dataset, cfg.budget
    if len(backbone.num_heads) != len(backbone.depths):
        raise UserError(
            f"backbone.num_heads {list(backbone.num_heads)} needs one entry per stage of "
            f"backbone.depths {list(backbone.depths)}"
        )
    for i, heads in enumerate(backbone.num_heads):
        width = backbone.embed_dim * 2**i
        if width % heads:
            raise UserError(
                f"backbone.num_heads[{i}]={heads} does not divide stage {i + 1}'s width {width} "
                f"(backbone.embed_dim={backbone.embed_dim} doubled per stage)"
            )
    multiple = backbone_multiple(backbone)
    size = dataset.image_size
    if size % multiple:
        low = max(multiple, size // multiple * multiple)
        raise UserError(
            f"dataset.image_size={size}: backbone {backbone.name} takes multiples of {multiple} "
            f"(patch {backbone.patch_size} x 2^{len(backbone.depths) - 1} merges), e.g. "
            f"{low} or {low + multiple}"
        )
    if "train_size" in dataset and dataset.train_size < budget.batch_size:
        raise UserError(
            f"dataset.train_size={dataset.train_size} is smaller than budget.batch_size="
            f"{budget.batch_size}: no full batch to train on; raise the one or lower the other"
        )


# -- output paths ------------------------------------------------------------------------------


def check_output_dir(path: str | Path, key: str) -> Path:
    """`path` exists as a directory (created if needed) in which files can be written; a
    one-line `UserError` naming the path and the problem otherwise."""
    path = Path(path).expanduser()
    for part in [path, *path.parents]:
        if part.exists() and not part.is_dir():
            raise UserError(f"{key}={path}: {part} is a file, not a directory; give a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(
            f"{key}={path}: cannot write there ({reason.lower()}); give a writable directory"
        ) from None
    return path


def parse_value(text: str) -> object:
    """A command-line value as YAML reads it (`3` an int, `1e-4` a float, `true` a bool)."""
    import yaml

    with contextlib.suppress(yaml.YAMLError):
        value = yaml.safe_load(text)
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", text):
            return float(text)  # YAML 1.1 reads 1e-4 as text
        return value
    return text

