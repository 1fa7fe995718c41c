"""The configuration's keys: each one's type and range.

Every key of the composed configuration (`conf/config.yaml` and its groups) has one line in
`SCHEMA`; a method's options are checked against its constructor's annotations
(`benchmark.config.methods.method_keys`), so a new method needs no line here.
`benchmark.config.checks.check_config` runs for every point of a sweep before the first run
starts and raises `UserError` with one line naming the key, the value and what it must be.

Adding a key: one line in `SCHEMA`, e.g. `"budget.label_smoothing": Float(ge=0, lt=1)`.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig, OmegaConf

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



def parse_value(text: str) -> object:
    """A command-line value as YAML reads it (`3` an int, `1e-4` a float, `true` a bool)."""
    import yaml

    with contextlib.suppress(yaml.YAMLError):
        value = yaml.safe_load(text)
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", text):
            return float(text)  # YAML 1.1 reads 1e-4 as text
        return value
    return text

