"""The markdown pages: one per comparison group, and the index that links them."""

from __future__ import annotations

import math
from pathlib import Path

from tabulate import tabulate

from benchmark.records import REFERENCE_METHOD
from benchmark.report import curves
from benchmark.report import statistics as stats
from benchmark.report.commands import reference_command, seeds_commands
from benchmark.report.figures import ERROR_BARS, FIGURES, front_labels
from benchmark.report.groups import Group
from benchmark.report.latex import TABLES
from benchmark.report.tables import (
    PUBLISHED_PASCAL_SWIN_T,
    memory_note,
    published_table,
    relative_table,
)
from benchmark.report.text import MISSING, error_text, md

THREE_SEEDS = (0, 1, 2)


def group_page(group: Group, figures: dict[str, Path]) -> str:
    ok = [run for row in group.ok_rows for run in row.runs]
    resolutions = sorted({str(r.get("eval_resolution")) for r in ok if "eval_resolution" in r})
    by_device = seeds_by_device(group)
    devices = sorted(by_device)
    seeds = sorted({s for row in group.rows for s in row.seeds})
    n_failed = sum(len(r.runs) for r in group.failed_rows)
    lines = [
        f"# {group.title}",
        "",
        f"Dataset `{group.dataset}`, tasks {', '.join(f'`{t}`' for t in group.tasks)}, "
        f"backbone `{group.backbone}`, budget `{group.budget}`. "
        f"Evaluation resolution: {', '.join(resolutions) or MISSING}. "
        f"Device: {', '.join(devices) or MISSING}. Seeds: {', '.join(map(str, seeds))}. "
        f"Runs: {len(ok)} finished, {n_failed} failed.",
        "",
        f"[All groups](index.md) · [summary.csv]({group.slug}/summary.csv)",
        "",
        "## Relative performance",
        "",
        "Δm (protocol §1.4) is recomputed here from each run's metrics against the single-task "
        "reference of the same seed. Rows are sorted by mean Δm; the best mean of each column "
        "is bold; ↑/↓ mark the direction of better. Trainable parameters include the "
        "decoders.",
        "",
        *statistics_text(group),
        relative_table(group),
        "",
        f"LaTeX (booktabs): [{TABLES['relative']}.tex]({group.slug}/{TABLES['relative']}.tex)",
        "",
    ]
    notes = list(group.notes)
    if not group.has_reference:
        notes.insert(0, f"Δm is missing: this group has no single-task reference. Produce it "
                        f"with `{reference_command(group)}`.")
    if group.ok_rows and not curves.has_curves(group.ok_rows):
        notes.append("No learning curves: these records were written before runs kept their "
                     "per-epoch losses; a re-run (force=true) records them.")
    mixed = device_note(by_device)
    if mixed:
        notes.append(mixed)
    _, mark_cpu = memory_note(group)
    if mark_cpu:
        notes.append("† peak memory measured as the rise of the process's resident memory on "
                     "a CPU, not the CUDA allocator's peak: compare only like with like.")
    lines += [f"- {md(note)}" for note in notes]
    if notes:
        lines.append("")
    if group.failed_rows:
        lines += ["## Failed runs", ""]
        for row in group.failed_rows:
            for run in row.runs:
                error = error_text(run).replace("`", "'")
                lines.append(f"- {md(row.label)} seed {run['seed']} (`{run['_path']}`): "
                             f"`{error}`")
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for spec in FIGURES:
            if spec.key not in figures:
                continue
            png = figures[spec.key]
            rel = f"{group.slug}/{png.name}"
            bars = f" {ERROR_BARS}" if spec.error_bars else ""
            lines += [f"![{spec.alt}]({rel})", "",
                      f"{spec.text}{bars} "
                      f"[SVG]({group.slug}/{png.with_suffix('.svg').name})"]
            if spec.cost is not None:
                front = front_labels(group, spec.cost)
                lines.append(f"Pareto-optimal: {', '.join(md(k) for k in front)}.")
            lines.append("")
    published = published_table(group)
    if published is not None:
        lines += [
            "## Beside the published numbers",
            "",
            f"Published: {PUBLISHED_PASCAL_SWIN_T['source']} (PASCAL-Context, Swin-T, "
            "ImageNet-1k weights, 448x448, 300 epochs), as quoted in protocol §3.2. "
            "\"printed\" is the paper's Δm; \"recomputed\" applies protocol §1.4 to the printed "
            "metrics (for full fine-tuning it gives +2.45, not the printed +2.23); ours is "
            f"recomputed against our own single-task reference, budget `{group.budget}`.",
            "",
            published,
            "",
            f"LaTeX (booktabs): [{TABLES['published']}.tex]"
            f"({group.slug}/{TABLES['published']}.tex)",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def seeds_by_device(group: Group) -> dict[str, dict[str, list[int]]]:
    """device -> row label -> the seeds of that row's finished runs on it (runs whose
    record names no device are left out)."""
    seeds: dict[str, dict[str, list[int]]] = {}
    for row in group.ok_rows:
        for run in row.runs:
            device = (run.get("cost") or {}).get("device")
            if device:
                seeds.setdefault(str(device), {}).setdefault(row.label, []).append(run["seed"])
    return seeds


def device_note(seeds: dict[str, dict[str, list[int]]]) -> str | None:
    """Which runs ran on another device than most of the group's (`seeds_by_device`), or
    None when they all ran on one: their times, rates and memory are not comparable with
    the rest."""
    if len(seeds) < 2:
        return None
    count = {device: sum(map(len, rows.values())) for device, rows in seeds.items()}
    common = max(sorted(seeds), key=count.get)

    def runs(rows: dict[str, list[int]]) -> str:
        return ", ".join(f"{label} (seed{'s' * (len(s) > 1)} {', '.join(map(str, s))})"
                         for label, s in rows.items())

    others = "; ".join(f"{device}: {runs(rows)}" for device, rows in sorted(seeds.items())
                       if device != common)
    return (f"Not every run ran on one device: {count[common]} on {common}, the others on "
            f"{others}. Train time, images/s and peak memory (and the Pareto front against "
            "time) compare only runs on the same device.")


def statistics_text(group: Group) -> list[str]:
    """What the numbers of the relative-performance table are, as paragraphs of the page:
    the intervals and paired comparisons with two or more seeds, else why there are none
    and the command that runs three seeds."""
    if group.max_seeds >= 2:
        text = (
            f"x ± h: the mean over seeds (n seeds) and the half-width h of its "
            f"{stats.METHOD_TEXT}. \"vs best\" compares each row with the best row (the "
            "first), paired over the seeds both ran: the per-seed differences of Δm and "
            "their 95 % t interval, starred (*) when it excludes zero; a row whose interval "
            "contains zero cannot be told apart from the best and is marked tied. "
            "\"Δm − full FT\" is the same paired comparison against full fine-tuning."
        )
        if not group.has_reference:
            text = text.split(' \"vs best\"')[0] + " Without Δm there is no comparison."
        return [text, ""]
    commands = seeds_commands([run for row in group.ok_rows for run in row.runs], THREE_SEEDS)
    lines = [
        "One seed per configuration: no confidence interval can be given, and no order "
        "between configurations whose Δm differ by less than the seed-to-seed variation can "
        "be read from this table. Three seeds (the finished seed is skipped) give intervals "
        "and paired comparisons:",
        "",
        "```",
        *commands,
        "```",
        "",
    ]
    return lines if commands else lines[:1] + [""]


def index_page(groups: list[Group]) -> str:
    body = []
    for group in groups:
        # rows are sorted by Δm, so the first scored one that is not the reference is the best
        best = next(
            (row for row in group.ok_rows if row.method != REFERENCE_METHOD and row.delta_m
             and row.mean_delta_m is not None and not math.isnan(row.mean_delta_m)),
            None,
        )
        body.append([
            f"[{group.title}]({group.slug}.md)",
            ", ".join(group.tasks),
            str(len(group.ok_rows)),
            str(sum(len(row.runs) for row in group.ok_rows)),
            str(sum(len(row.runs) for row in group.failed_rows)),
            f"{md(best.label)} ({best.mean_delta_m:+.2f})" if best else MISSING,
        ])
    table = tabulate(body, headers=["group", "tasks", "configurations", "runs", "failed",
                                    "best Δm %"], tablefmt="github", disable_numparse=True)
    return "\n".join([
        "# Results",
        "",
        "One page per comparison group (dataset, tasks, backbone, budget), generated by "
        "`python -m benchmark.report` from the result records alone.",
        "",
        table,
        "",
    ])
