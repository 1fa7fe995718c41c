"""The method protocol: what a method is and the encoders it returns (protocol §2.3).

A method is a small class: it receives the pre-trained `SwinBackbone` (protocol §2.1) and the
task list, injects whatever layers it needs, decides which backbone parameters train, and
returns an encoder. The harness builds the decoders (always trained), the optimiser, the
loop and the evaluation (`benchmark.model`), so a method file holds only what is particular
to the method.

An encoder maps a batch of images to each task's list of four stage maps. How it shares
computation between tasks is its mode, a property of its class:

- `Encoder` (`shared`): one backbone pass, the same maps for every task (full FT, LoRA,
  adapters, ...);
- `TaskStreamEncoder` (`task_streams`): one pass whose task-specific branches leave the
  backbone at every stage (MTLoRA; the blocks return `TaskStreams`, see `benchmark.backbone`);
- `PerTaskEncoder` (`per_task`): one pass per task with task-conditioned weights (Polyhistor,
  HyperFormer), batched: the images are repeated once per task and the conditioned layers
  read each sample's task from a shared `TaskContext`.

The decoders never know which mode produced their input.

A method whose tasks must be trained as separate models (single-task baselines) says so in
`task_groups`: the harness then trains one model per group, each with its own optimiser,
and merges their metrics and parameter counts into one result.

A method's options are the arguments of its constructor (`name` aside), declared once there
with their annotations (the configuration checks a run's options against them) and stored
on the instance under the same names; `options()` reads them back.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from benchmark.backbone import SwinBackbone


class Encoder(nn.Module):
    """Runs the backbone once and gives every task the same maps (`shared`)."""

    mode = "shared"

    def __init__(self, backbone: SwinBackbone, tasks: Sequence[str]):
        super().__init__()
        self.backbone = backbone
        self.tasks = list(tasks)

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        return self.backbone(images, self.tasks)


class TaskStreamEncoder(Encoder):
    """Runs the backbone once; its blocks branch into one stream per task (`task_streams`)."""

    mode = "task_streams"


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
    """One backbone pass per task, batched across tasks (`per_task`).

    The batch is repeated once per task (task-major), the conditioned layers look up each
    sample's task in `context`, and the output is split back per task. `tasks_per_pass`
    bounds memory: with fewer tasks per pass the tasks are processed in chunks.
    """

    mode = "per_task"

    def __init__(
        self,
        backbone: SwinBackbone,
        tasks: Sequence[str],
        context: TaskContext,
        tasks_per_pass: int | None = None,
    ):
        super().__init__(backbone, tasks)
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


class Method:
    """Base class; subclasses override `build_encoder` and document what trains."""

    #: trainable parameters the paper reports for Swin-T on PASCAL-Context (millions)
    paper_trainable_m: float | None = None

    def __init__(self, name: str | None = None):
        self.name = name or type(self).__name__.lower()

    @property
    def label(self) -> str:
        """How result tables name this configuration (e.g. `mtlora r=16`)."""
        return self.name

    @classmethod
    def option_parameters(cls) -> list[inspect.Parameter]:
        """The constructor's arguments but `name`, in order; a constructor taking
        `**options` passes them on, so its base class's arguments follow."""
        found: dict[str, inspect.Parameter] = {}
        for klass in cls.__mro__:
            if klass is Method:
                break
            if "__init__" not in vars(klass):
                continue
            params = list(inspect.signature(klass.__init__).parameters.values())[1:]
            for p in params:
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "name":
                    found.setdefault(p.name, p)
            if not any(p.kind == p.VAR_KEYWORD for p in params):
                break
        return list(found.values())

    @classmethod
    def option_names(cls) -> list[str]:
        return [p.name for p in cls.option_parameters()]

    def options(self) -> dict:
        """The method's options as the constructor stored them (`option_names`)."""
        return {key: getattr(self, key) for key in self.option_names()}

    def task_groups(self, tasks: Sequence[str]) -> list[list[str]]:
        """Tasks trained together in one model; one group unless tasks train apart."""
        return [list(tasks)]

    def build_encoder(self, backbone: SwinBackbone, tasks: Sequence[str]) -> Encoder:
        """Shape `backbone` for `tasks` and return the encoder; the default trains it all."""
        return Encoder(backbone, tasks)
