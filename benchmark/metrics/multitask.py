"""All the meters of a model (`build_meter`, `TaskMeters`) and the multi-task score
`delta_m`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from benchmark.metrics.binary import EdgeMeter, SaliencyMeter
from benchmark.metrics.geometry import DepthMeter, NormalsMeter
from benchmark.metrics.meter import Meter
from benchmark.metrics.segmentation import SegmentationMeter
from benchmark.tasks import FIXED_OUTPUTS, task_spec


def build_meter(task: str, num_outputs: int, device: torch.device | str | None = None) -> Meter:
    """The meter of ``task`` for a head with ``num_outputs`` channels."""
    task_spec(task)  # unknown task -> ValueError
    expected = FIXED_OUTPUTS.get(task)
    if expected is not None and num_outputs != expected:
        raise ValueError(f"task {task!r} has {expected} outputs, got num_outputs={num_outputs}")
    if task in ("semseg", "human_parts"):
        return SegmentationMeter(num_outputs, device=device)
    if task == "sal":
        return SaliencyMeter(device=device)
    if task == "normals":
        return NormalsMeter(device=device)
    if task == "depth":
        return DepthMeter(device=device)
    if task == "edge":
        return EdgeMeter(device=device)
    raise ValueError(f"no meter for task {task!r}")


class TaskMeters:
    """One meter per task; ``outputs`` and ``batch`` are keyed by task name."""

    def __init__(
        self, num_outputs: Mapping[str, int], device: torch.device | str | None = None
    ) -> None:
        self.meters: dict[str, Meter] = {
            task: build_meter(task, n, device=device) for task, n in num_outputs.items()
        }

    @property
    def tasks(self) -> list[str]:
        return list(self.meters)

    def __getitem__(self, task: str) -> Meter:
        return self.meters[task]

    def update(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> None:
        for task, meter in self.meters.items():
            if task not in outputs:
                raise KeyError(f"model outputs have no prediction for task {task!r}")
            if task not in batch:
                raise KeyError(f"batch has no label for task {task!r}")
            meter.update(outputs[task], batch[task])

    def compute(self) -> dict[str, dict[str, float]]:
        return {task: meter.compute() for task, meter in self.meters.items()}

    def state_tensors(self) -> list[Tensor]:
        """The live state of every meter, concatenated in task order (see Meter.state_tensors)."""
        return [t for meter in self.meters.values() for t in meter.state_tensors()]

    def reset(self) -> None:
        for meter in self.meters.values():
            meter.reset()

    def all_reduce_(self, group=None) -> TaskMeters:
        for meter in self.meters.values():
            meter.all_reduce_(group)
        return self


def delta_m(
    metrics: Mapping[str, Mapping[str, float]],
    reference: Mapping[str, Mapping[str, float]],
    tasks: Sequence[str] | None = None,
) -> float:
    """Multi-task score of Maninis et al. (2019), in percent.

    ``Δm = 100 / T * sum_t s_t * (M_t - R_t) / R_t`` over each task's primary metric
    (``benchmark.tasks``), with ``s_t = +1`` when higher is better and ``-1`` otherwise. Both
    arguments are nested ``{task: {metric: value}}`` dicts; ``reference`` is usually the
    single-task baseline.

    ``tasks`` defaults to the tasks of ``reference`` that ``metrics`` also has, in the
    reference's order, so a method trained on a subset of the reference's tasks is scored on
    that subset; pass ``tasks`` explicitly to insist on a fixed task set. Raises ``ValueError``
    naming the task when a requested task or its primary metric is missing from either side
    or when a reference value is zero, and when no task is shared. A NaN metric (a diverged
    run) gives a NaN score.
    """
    if tasks is None:
        tasks = [task for task in reference if task in metrics]
        if not tasks:
            raise ValueError("metrics and reference share no task")
    elif not tasks:
        raise ValueError("tasks must not be empty")
    total = 0.0
    for task in tasks:
        spec = task_spec(task)
        values = []
        for name, source in (("metrics", metrics), ("reference", reference)):
            try:
                values.append(float(source[task][spec.primary]))
            except KeyError:
                raise ValueError(
                    f"{name} lack the primary metric {spec.primary_key!r} of task {task!r}"
                ) from None
        value, ref = values
        if ref == 0:
            raise ValueError(f"reference {spec.primary_key} of task {task!r} is 0")
        sign = 1.0 if spec.higher_is_better else -1.0
        total += sign * (value - ref) / ref
    return 100.0 * total / len(tasks)
