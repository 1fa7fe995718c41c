"""`python -m benchmark.report [results_dir=results] [output_dir=reports]`.

Reads result records only (never the training code) and writes, per comparison group
(dataset, tasks, backbone, budget), a markdown page with the relative-performance table,
plus `index.md` linking the groups. Seeds are aggregated as mean ± std. Δm is recomputed
from the metrics against the single-task reference of the same group, matched by seed
(the mean of the references when that seed has none), never copied from the records.
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from tabulate import tabulate

from benchmark.errors import UserError
from benchmark.metrics import delta_m
from benchmark.records import iter_records, slug
from benchmark.tasks import TASKS

REFERENCE = "single_task"


def load(results_dir: Path) -> tuple[list[dict], list[str]]:
    """The records below `results_dir` and a warning line for each malformed one."""
    if not results_dir.is_dir():
        raise UserError(
            f"no results directory at {results_dir}; run `python -m benchmark.run` first "
            "or pass results_dir=DIR"
        )
    records, warnings = [], []
    for path, record in iter_records(results_dir):
        needed = ("status", "method", "label", "dataset", "tasks", "backbone", "budget", "seed")
        if record is None or any(k not in record for k in needed):
            warnings.append(f"skipped malformed record {path}")
            continue
        records.append(record)
    if not records:
        raise UserError(
            f"no result records under {results_dir}; run `python -m benchmark.run` first"
        )
    return records, warnings


def group_key(record: dict) -> tuple:
    return (record["dataset"], tuple(record["tasks"]), record["backbone"], record["budget"])


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _fmt(values: list[float], digits: int = 2, sign: bool = False) -> str:
    if not values:
        return "–"
    mean, std = _mean_std(values)
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


def group_table(records: list[dict]) -> tuple[list[str], list[list[str]], list[str]]:
    tasks = list(records[0]["tasks"])
    ok = [r for r in records if r["status"] == "ok"]
    refs = {r["seed"]: r["metrics"] for r in ok if r["method"] == REFERENCE}
    notes = []
    if not refs:
        notes.append(
            "Δm is missing: this group has no single-task reference; produce it with "
            "`python -m benchmark.run method=single_task` and the same dataset, backbone, "
            "budget and seeds."
        )
    mean_ref = None
    if refs:
        mean_ref = {
            t: {k: statistics.fmean(m[t][k] for m in refs.values()) for k in refs[min(refs)][t]}
            for t in tasks
        }
    rows_by_label: dict[str, list[dict]] = defaultdict(list)
    for r in ok:
        rows_by_label[r["label"]].append(r)

    headers = ["method", "seeds"]
    for t in tasks:
        spec = TASKS[t]
        headers.append(f"{spec.primary_key} {'↑' if spec.higher_is_better else '↓'}")
    headers += ["Δm % ↑", "trainable M", "train s", "peak MB"]
    rows = []
    for label, runs in rows_by_label.items():
        scores = []
        if mean_ref is not None:
            scores = [delta_m(r["metrics"], refs.get(r["seed"], mean_ref), tasks) for r in runs]
        row = [label, str(len(runs))]
        for t in tasks:
            metric = TASKS[t].primary
            row.append(_fmt([r["metrics"][t][metric] for r in runs]))
        cost = [r.get("cost") or {} for r in runs]
        row += [
            _fmt(scores, sign=True),
            f"{runs[0]['params']['trainable'] / 1e6:.2f}",
            _fmt([c["train_seconds"] for c in cost if c.get("train_seconds") is not None], 0),
            _fmt([c["peak_memory_mb"] for c in cost if c.get("peak_memory_mb") is not None], 0),
        ]
        rows.append((statistics.fmean(scores) if scores else float("-inf"), row))
    rows.sort(key=lambda item: -item[0])
    table = [row for _, row in rows]
    for r in records:
        if r["status"] != "ok":
            table.append([f"{r['label']} (failed)", str(r["seed"]), *(["–"] * (len(headers) - 2))])
            notes.append(f"{r['label']} seed {r['seed']} failed: {r.get('error')}")
    return headers, table, notes


def write_reports(records: list[dict], output_dir: Path) -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[group_key(r)].append(r)
    pages = []
    index = ["# Results", "", "One page per group (dataset, tasks, backbone, budget).", ""]
    for key in sorted(groups):
        dataset, tasks, backbone, budget = key
        name = slug(f"{dataset}-{backbone}-{budget}-{'-'.join(tasks)}") + ".md"
        headers, table, notes = group_table(groups[key])
        ok = [r for r in groups[key] if r["status"] == "ok"]
        devices = sorted({(r.get("cost") or {}).get("device", "?") for r in ok})
        lines = [
            f"# {dataset} · {backbone} · budget {budget}",
            "",
            f"Tasks: {', '.join(tasks)}. Evaluation resolution: "
            f"{', '.join(sorted({str(r.get('eval_resolution')) for r in ok})) or '–'}. "
            f"Device: {', '.join(devices) or '–'}.",
            "",
            "Mean ± standard deviation over seeds; Δm against the single-task reference "
            "(SPEC 1.4), recomputed from the metrics; rows sorted by Δm.",
            "",
            tabulate(table, headers=headers, tablefmt="github", disable_numparse=True),
            "",
        ]
        lines += [f"- {note}" for note in notes]
        (output_dir / name).write_text("\n".join(lines).rstrip() + "\n")
        pages.append(output_dir / name)
        index.append(f"- [{dataset} · {backbone} · {budget} · {', '.join(tasks)}]({name})")
    (output_dir / "index.md").write_text("\n".join(index) + "\n")
    return pages


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    args = {"results_dir": "results", "output_dir": "reports"}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in args:
            raise UserError(f"unknown argument {arg!r}; use results_dir=DIR output_dir=DIR")
        args[key] = value
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        records, warnings = load(Path(args["results_dir"]))
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        pages = write_reports(records, Path(args["output_dir"]))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(pages)} report page(s) and {Path(args['output_dir']) / 'index.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
