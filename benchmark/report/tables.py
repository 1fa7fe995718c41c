"""The tables of a group's page as cells: the relative-performance table and, for the group
the MTLoRA paper reports, its published numbers beside ours.

A table is a header, the cell text (markdown: bold, escapes) and an alignment per column;
`tabulate` turns it into markdown here and `benchmark.report.latex` into LaTeX.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tabulate import tabulate

from benchmark.metrics import delta_m
from benchmark.report import statistics as stats
from benchmark.report.groups import FULL_FT, Group, Row, mean_std
from benchmark.report.text import MISSING, md, number
from benchmark.tasks import TASKS

# MTLoRA (Agiza, Neseem and Reda, CVPR 2024), Table 1: PASCAL-Context, Swin-T with
# ImageNet-1k weights, 448x448, 300 epochs; quoted in protocol §3.2. Metrics are semseg mIoU,
# human_parts mIoU, sal mIoU and the normals mean angle; `delta_m` is the printed Δm (%),
# `trainable_m` the printed count (M). `label` is the record label of our configuration.
PUBLISHED_PASCAL_SWIN_T = {
    "source": "MTLoRA (Agiza et al., CVPR 2024), Table 1, and DiTASK (Mantri et al., CVPR 2025)",
    "dataset": "pascal_context",
    "backbone": "swin_tiny",
    "rows": [
        {"name": "single task", "label": "single task", "delta_m": 0.0, "trainable_m": 112.62,
         "metrics": {"semseg": 67.21, "human_parts": 61.93, "sal": 62.35, "normals": 17.97}},
        {"name": "MTL full fine-tuning", "label": "full_ft", "delta_m": 2.23,
         "trainable_m": 30.06,
         "metrics": {"semseg": 67.56, "human_parts": 60.24, "sal": 65.21, "normals": 16.64}},
        {"name": "MTL decoders only", "label": "decoders_only", "delta_m": -9.95,
         "trainable_m": 1.94,
         "metrics": {"semseg": 65.09, "human_parts": 53.48, "sal": 57.46, "normals": 20.69}},
        {"name": "MTLoRA r=16", "label": "mtlora r=16", "delta_m": 1.35, "trainable_m": 4.95,
         "metrics": {"semseg": 68.19, "human_parts": 58.99, "sal": 64.48, "normals": 17.03}},
        {"name": "MTLoRA r=32", "label": "mtlora r=32", "delta_m": 2.16, "trainable_m": 6.08,
         "metrics": {"semseg": 67.74, "human_parts": 59.46, "sal": 64.90, "normals": 16.59}},
        {"name": "MTLoRA r=64", "label": "mtlora r=64", "delta_m": 2.55, "trainable_m": 8.34,
         "metrics": {"semseg": 67.90, "human_parts": 59.84, "sal": 65.40, "normals": 16.60}},
        # DiTASK (Mantri et al., CVPR 2025), its abstract: the count excludes the decoders
        {"name": "DiTASK (CVPR 2025; M without decoders)", "label": "ditask nc=64",
         "delta_m": 3.22, "trainable_m": 1.61,
         "metrics": {"semseg": 69.66, "human_parts": 62.02, "sal": 65.00, "normals": 17.10}},
    ],
}

METRIC_NAMES = {"miou": "mIoU", "mean": "mean angle ° (papers' \"rmse\")",
                "median": "median angle °", "rms": "RMS angle °", "rmse": "RMSE", "maxf": "maxF"}

MEMORY_KINDS = {"cuda_allocated": "CUDA allocated", "cpu_rss_increase": "CPU RSS increase"}


def stat_cell(values: Sequence[float], digits: int, sign: bool = False) -> tuple[float | None, str]:
    """(mean rounded as shown, 'mean ± half-width of its 95 % interval') or (None, '–')."""
    found = stats.interval(values)
    if found is None:
        return None, MISSING
    mean, half = found.mean, found.half_width
    text = number(mean, digits, sign)
    if half is not None and not math.isnan(half):
        text += f" ± {half:.{digits}f}"
    return (None if math.isnan(mean) else round(mean, digits)), text


def ci_half(values: Sequence[float]) -> float | None:
    found = stats.interval(values)
    return None if found is None else found.half_width


def comparison(found: stats.Comparison | None, digits: int = 2) -> tuple[None, str]:
    """'difference [low, high]', starred when the interval excludes zero."""
    if found is None:
        return None, MISSING
    d = found.difference
    if d.half_width is None:
        return None, f"{number(d.mean, digits, True)} (n=1)"
    star = " *" if d.excludes_zero else ""
    return None, (f"{number(d.mean, digits, True)} [{number(d.low, digits, True)}, "
                  f"{number(d.high, digits, True)}]{star}")


def time_unit(group: Group) -> tuple[str, float]:
    longest = max((mean_std(r.cost("train_seconds"))[0] or 0.0 for r in group.ok_rows),
                  default=0.0)
    if longest >= 2 * 3600:
        return "h", 3600.0
    if longest >= 120:
        return "min", 60.0
    return "s", 1.0


def memory_note(group: Group) -> tuple[str, bool]:
    """Header suffix for the memory column, and whether cells must mark the CPU rows."""
    kinds = sorted({k for r in group.ok_rows if r.cost("peak_memory_mb") for k in r.memory_kinds})
    if len(kinds) == 1:
        return f"MB, {MEMORY_KINDS.get(kinds[0], kinds[0])}", False
    return "MB", "cpu_rss_increase" in kinds


@dataclass
class Column:
    header: str
    better: str | None  # "max", "min" or None: which value is bold
    cell: Callable[[Row], tuple[float | None, str]]


def metric_header(task: str) -> str:
    """A task's primary metric as a column header, with the direction that is better."""
    spec = TASKS[task]
    arrow = "↑" if spec.higher_is_better else "↓"
    return f"{task} {METRIC_NAMES.get(spec.primary, spec.primary)} {arrow}"


def table_columns(group: Group) -> list[Column]:
    columns = [Column("method", None, lambda r: (None, md(r.label))),
               Column("n", None, lambda r: (None, str(len(r.runs))))]
    for t in group.tasks:
        spec = TASKS[t]
        columns.append(Column(
            metric_header(t),
            "max" if spec.higher_is_better else "min",
            lambda r, t=t, m=spec.primary: stat_cell(r.metric(t, m), 2),
        ))
    columns.append(Column("Δm % ↑", "max", lambda r: stat_cell(r.delta_m, 2, sign=True)))
    if group.max_seeds >= 2 and group.has_reference:
        standing = group.standings()
        none = stats.Standing("")

        def verdict(r: Row) -> tuple[None, str]:
            return None, standing.get(r.label, none).verdict or MISSING

        columns.append(Column("vs best", None, verdict))
        columns.append(Column("Δm − best [95 % CI]", None,
                              lambda r: comparison(standing.get(r.label, none).vs_best)))
        if any(r.method == FULL_FT for r in group.ok_rows):
            columns.append(Column(
                "Δm − full FT [95 % CI]", None,
                lambda r: comparison(standing.get(r.label, none).vs_full_ft),
            ))
    columns.append(Column(
        "trainable M ↓", "min",
        lambda r: stat_cell([v / 1e6 for v in r.trainable], 2),
    ))
    full = group.full_ft_trainable()
    if full:
        columns.append(Column(
            "% of full FT ↓", "min",
            lambda r: stat_cell([100 * v / full for v in r.trainable], 1),
        ))
    suffix, mark_cpu = memory_note(group)

    def memory(row: Row) -> tuple[float | None, str]:
        value, text = stat_cell(row.cost("peak_memory_mb"), 0)
        if mark_cpu and value is not None and "cpu_rss_increase" in row.memory_kinds:
            text += " †"
        return value, text

    columns.append(Column(f"peak memory ({suffix}) ↓", "min", memory))
    unit, scale = time_unit(group)
    columns.append(Column(
        f"train time ({unit}) ↓", "min",
        lambda r: stat_cell([v / scale for v in r.cost("train_seconds")], 1 if scale == 1 else 2),
    ))
    columns.append(Column(
        "images/s ↑", "max", lambda r: stat_cell(r.cost("train_images_per_second"), 1),
    ))
    return columns


def relative_table(group: Group) -> str:
    headers, body, align = relative_cells(group)
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True,
                    colalign=align)


def relative_cells(group: Group) -> tuple[list[str], list[list[str]], list[str]]:
    """The relative-performance table as header, cell text and alignment (markdown cells:
    the same text makes the markdown table and its LaTeX twin)."""
    columns = table_columns(group)
    body = []
    cells = [[c.cell(r) for c in columns] for r in group.ok_rows]
    best = []
    for j, column in enumerate(columns):
        values = [row[j][0] for row in cells if row[j][0] is not None]
        if column.better is None or len(values) < 2 or len(set(values)) < 2:
            best.append(None)
        else:
            best.append(max(values) if column.better == "max" else min(values))
    for row in cells:
        body.append([
            f"**{text}**" if best[j] is not None and value == best[j] else text
            for j, (value, text) in enumerate(row)
        ])
    for row in group.failed_rows:
        seeds = ", ".join(map(str, row.seeds))
        body.append([f"{md(row.label)} (failed, seed {seeds})", "0"]
                    + [MISSING] * (len(columns) - 2))
    align = ["left", "right"] + ["right"] * (len(columns) - 2)
    return [c.header for c in columns], body, align


def published_table(group: Group) -> str | None:
    """Our numbers beside the published ones, for the group they were published for."""
    cells = published_cells(group)
    if cells is None:
        return None
    headers, body, align = cells
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True,
                    colalign=align)


def published_cells(group: Group) -> tuple[list[str], list[list[str]], list[str]] | None:
    source = PUBLISHED_PASCAL_SWIN_T
    if (group.dataset, group.backbone) != (source["dataset"], source["backbone"]):
        return None
    tasks = list(source["rows"][0]["metrics"])
    if not set(tasks) <= set(group.tasks):
        return None
    as_metrics = {
        row["name"]: {t: {TASKS[t].primary: v} for t, v in row["metrics"].items()}
        for row in source["rows"]
    }
    reference = as_metrics[source["rows"][0]["name"]]
    ours = {r.label: r for r in group.ok_rows}
    headers = ["method", "source", *map(metric_header, tasks),
               "Δm % (printed)", "Δm % (recomputed)", "trainable M"]
    body = []
    for row in source["rows"]:
        recomputed = delta_m(as_metrics[row["name"]], reference, tasks)
        body.append(
            [row["name"], "published"]
            + [f"{row['metrics'][t]:.2f}" for t in tasks]
            + [f"{row['delta_m']:+.2f}", f"{recomputed:+.2f}", f"{row['trainable_m']:.2f}"]
        )
        mine = ours.get(row["label"])
        if mine is None:
            body.append(["", f"ours ({md(row['label'])}): not run"]
                        + [MISSING] * (len(headers) - 2))
            continue
        body.append(
            ["", f"ours ({md(mine.label)}, n={len(mine.runs)})"]
            + [stat_cell(mine.metric(t, TASKS[t].primary), 2)[1] for t in tasks]
            + [MISSING, stat_cell(mine.delta_m, 2, sign=True)[1],
               stat_cell([v / 1e6 for v in mine.trainable], 2)[1]]
        )
    align = ["left", "left"] + ["right"] * (len(headers) - 2)
    return headers, body, align
