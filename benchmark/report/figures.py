"""What the report draws for a group: one table of figures, and the drawing of each.

Every figure is one entry of `FIGURES`, in the order of the page: its file name, its alt
text and caption, and for the trade-off figures the cost per run that Δm is traded against
with its axis (unit and label). `benchmark.report.plots` draws them; this module decides
what goes in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmark.records import REFERENCE_METHOD
from benchmark.report import curves, plots
from benchmark.report.groups import Group, Row, mean_std
from benchmark.report.tables import METRIC_NAMES, ci_half, memory_note, time_unit
from benchmark.tasks import TASKS

ERROR_BARS = ("Error bars: the 95 % confidence interval of the mean over seeds (Student t); "
              "none where a configuration has one seed.")


@dataclass(frozen=True)
class FigureSpec:
    """One figure of a group's page.

    `cost`: for a trade-off figure, the cost per run of a row that Δm is traded against;
    `axis`: its unit size and axis label for a group; `log_x` and `what` (the title's
    "Δm against ...") as `plots.tradeoff_figure` takes them."""

    key: str
    stem: str
    alt: str
    text: str
    error_bars: bool = True
    cost: Callable[[Row], list[float]] | None = None
    axis: Callable[[Group], tuple[float, str]] | None = None
    log_x: bool | None = None
    what: str = ""


def _memory_axis(group: Group) -> tuple[float, str]:
    suffix, _ = memory_note(group)
    return 1.0, f"peak training memory ({suffix})"


def _time_axis(group: Group) -> tuple[float, str]:
    unit, scale = time_unit(group)
    return scale, f"training time ({unit})"


FIGURES = (
    FigureSpec(
        "params", "delta_m_vs_params", "Δm against trainable parameters",
        "Δm against trainable parameters (log scale); dashed: the Pareto front "
        "(higher Δm, fewer parameters).",
        cost=lambda r: r.trainable,
        axis=lambda g: (1e6, "trainable parameters (M, log scale)"),
        log_x=True, what="trainable parameters",
    ),
    FigureSpec(
        "memory", "delta_m_vs_memory", "Δm against peak training memory",
        "Δm against peak training memory, with its Pareto front.",
        cost=lambda r: r.cost("peak_memory_mb"), axis=_memory_axis,
        what="peak training memory",
    ),
    FigureSpec(
        "time", "delta_m_vs_time", "Δm against training time",
        "Δm against training time, with its Pareto front.",
        cost=lambda r: r.cost("train_seconds"), axis=_time_axis, what="training time",
    ),
    FigureSpec(
        "change", "per_task_change", "per-task change relative to single task",
        "Change of each task's primary metric relative to the single-task reference, "
        "in percent and sign-corrected so that up is better; the last group is Δm, "
        "their mean.",
    ),
    FigureSpec(
        "curves", "learning_curves", "learning curves",
        "Learning curves: each task's mean training loss per epoch (unweighted) and, "
        "for runs with `eval_every=N`, the primary validation metric every N epochs; "
        "the line is the mean over seeds, the shaded band its 95 % confidence interval "
        "(Student t) where two or more seeds have the epoch. A loss still falling at "
        "the last epoch says the budget was too short to converge.",
        error_bars=False,
    ),
)
BY_KEY = {spec.key: spec for spec in FIGURES}


def _points(group: Group, cost: Callable[[Row], list[float]]) -> list[plots.Point]:
    points = []
    for row in group.ok_rows:
        (x, _), (y, _) = mean_std(cost(row)), mean_std(row.delta_m)
        if x is not None and y is not None:
            points.append(plots.Point(row.label, x, y, ci_half(cost(row)), ci_half(row.delta_m)))
    return points


def front_labels(group: Group, cost: Callable[[Row], list[float]]) -> list[str]:
    return plots.pareto_front({p.label: (p.x, p.y) for p in _points(group, cost)})


def write_figures(group: Group, folder: Path, styles: dict) -> dict[str, Path]:
    """Draw the group's figures into `folder`; the PNG path of each figure drawn by key."""
    title = group.title
    drawn = {}
    learning = curves.group_curves(group.ok_rows, group.tasks)
    paths = plots.curves_figure(
        learning, styles, folder / BY_KEY["curves"].stem,
        title=f"{title}\nlearning curves (mean over seeds, band: 95 % interval)",
    )
    if paths:
        drawn["curves"] = paths[0]
    if not group.has_reference:
        return drawn
    for spec in FIGURES:
        if spec.cost is None:
            continue
        unit_size, xlabel = spec.axis(group)

        def cost(r: Row, spec=spec, unit_size=unit_size) -> list[float]:
            return [v / unit_size for v in spec.cost(r)]

        paths = plots.tradeoff_figure(
            _points(group, cost), styles, folder / spec.stem,
            title=f"{title}\nΔm against {spec.what}", xlabel=xlabel, log_x=spec.log_x,
        )
        if paths:
            drawn[spec.key] = paths[0]
    changes = {
        row.label: {**{t: row.change.get(t, []) for t in group.tasks}, "Δm": row.delta_m}
        for row in group.ok_rows if row.method != REFERENCE_METHOD
    }
    names = [f"{t}\n{METRIC_NAMES.get(TASKS[t].primary, TASKS[t].primary)}" for t in group.tasks]
    relabelled = {
        label: {name: values[t] for name, t in zip(names, group.tasks)} | {"Δm": values["Δm"]}
        for label, values in changes.items()
    }
    paths = plots.change_figure(
        relabelled, [*names, "Δm"], styles, folder / BY_KEY["change"].stem,
        title=f"{title}\nchange relative to single task, per task (sign-corrected)",
    )
    if paths:
        drawn["change"] = paths[0]
    return drawn
