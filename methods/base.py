"""The interface through which a method shapes the shared encoder.

A method is a small class: it receives the pre-trained `SwinBackbone` (protocol §2.1) and the
task list, injects whatever layers it needs, decides which backbone parameters train, and
returns an encoder in one of the three modes of protocol §2.3 (`benchmark.model`). The harness
builds the decoders (always trained), the optimiser, the loop and the evaluation, so a
method file holds only what is particular to the method.

A method whose tasks must be trained as separate models (single-task baselines) says so in
`task_groups`: the harness then trains one model per group, each with its own optimiser,
and merges their metrics and parameter counts into one result.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from benchmark.backbone import SwinBackbone
from benchmark.model import Encoder


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

    def options(self) -> dict:
        """The method's options as recorded in the result (`method_config`)."""
        return {}

    def task_groups(self, tasks: Sequence[str]) -> list[list[str]]:
        """Tasks trained together in one model; one group unless tasks train apart."""
        return [list(tasks)]

    def build_encoder(self, backbone: SwinBackbone, tasks: Sequence[str]) -> Encoder:
        """Shape `backbone` for `tasks` and return the encoder; the default trains it all."""
        return Encoder(backbone, tasks)


def positive_ints(**options: object) -> list[int]:
    """The values of `options` as ints, in order; a ValueError naming the first option that
    is not a whole number >= 1."""
    values = []
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value \
                or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
        values.append(int(value))
    return values


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def unfreeze_norms(module: nn.Module) -> nn.Module:
    """Make the weight and bias of every `nn.LayerNorm` inside `module` trainable."""
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            m.requires_grad_(True)
    return module
