"""Learning curves from result records: what the report's learning-curve figure draws.

A record's `curves` holds, per task, the mean training loss of each epoch (`train_loss`,
index 0 is epoch 1) and, for runs with `eval_every=N`, the validation metrics of every N-th
epoch (`val`). Here the seeds of a configuration are averaged epoch by epoch, with the 95 %
t interval where two or more seeds have the epoch. Records written before curves existed,
or with a malformed `curves` field, contribute nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from benchmark.report import statistics as stats
from benchmark.tasks import TASKS

METRIC_NAMES = {"miou": "mIoU", "mean": "mean angle °", "median": "median angle °",
                "rmse": "RMSE", "maxf": "maxF"}


@dataclass(frozen=True)
class Curve:
    """One configuration's curve: epochs, the mean over seeds, and the half-width of the
    95 % interval (None where fewer than two seeds have the epoch)."""

    epochs: list[int]
    mean: list[float]
    half_width: list[float | None]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _train_loss(run: dict, task: str) -> dict[int, float]:
    curves = run.get("curves")
    losses = curves.get("train_loss") if isinstance(curves, dict) else None
    values = losses.get(task) if isinstance(losses, dict) else None
    if not isinstance(values, list):
        return {}
    return {epoch: float(v) for epoch, v in enumerate(values, 1) if _number(v)}


def _validation(run: dict, task: str, metric: str) -> dict[int, float]:
    curves = run.get("curves")
    points = curves.get("val") if isinstance(curves, dict) else None
    out = {}
    for point in points if isinstance(points, list) else []:
        if not isinstance(point, dict) or not isinstance(point.get("epoch"), int):
            continue
        value = ((point.get("metrics") or {}).get(task) or {}).get(metric)
        if _number(value):
            out[point["epoch"]] = float(value)
    return out


def average(per_seed: Sequence[dict[int, float]]) -> Curve | None:
    """The epoch-by-epoch mean of several seeds' curves (epoch -> value)."""
    epochs = sorted({e for curve in per_seed for e in curve})
    if not epochs:
        return None
    found = [stats.interval([c[e] for c in per_seed if e in c]) for e in epochs]
    return Curve(epochs, [f.mean for f in found], [f.half_width for f in found])


def group_curves(rows: Sequence, tasks: Sequence[str]) -> dict[str, dict[str, Curve]]:
    """Panel title -> configuration label -> curve, for `rows` (objects with `label` and
    `runs`, the runs being records): one panel per task's training loss, then one per
    task's primary validation metric where some run recorded it. Empty panels are left out.
    """
    panels: dict[str, dict[str, Curve]] = {}
    for task in tasks:
        title = f"{task}: training loss"
        for row in rows:
            curve = average([_train_loss(run, task) for run in row.runs])
            if curve is not None:
                panels.setdefault(title, {})[row.label] = curve
    for task in tasks:
        spec = TASKS[task]
        better = "higher" if spec.higher_is_better else "lower"
        name = METRIC_NAMES.get(spec.primary, spec.primary)
        title = f"{task}: validation {name} ({better} is better)"
        for row in rows:
            curve = average([_validation(run, task, spec.primary) for run in row.runs])
            if curve is not None:
                panels.setdefault(title, {})[row.label] = curve
    return panels


def has_curves(rows: Sequence) -> bool:
    """Whether any run of `rows` recorded a training-loss curve."""
    return any(
        isinstance(run.get("curves"), dict) and run["curves"].get("train_loss")
        for row in rows for run in row.runs
    )
