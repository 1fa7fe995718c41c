"""`python -m benchmark.report [results_dir=results] [output_dir=reports]` (protocol §5.3).

Reads result records only (never the training code) and writes, per comparison group
(dataset, tasks, backbone, budget):

    output_dir/index.md                  links every group
    output_dir/<group>.md                the group's page: relative-performance table, notes,
                                         figures, and for PASCAL-Context with Swin-T the
                                         published numbers beside ours
    output_dir/<group>/summary.csv       one row per configuration label
    output_dir/<group>/*.tex             the LaTeX (booktabs) twin of each table of the page
    output_dir/<group>/*.png, *.svg      Δm against trainable parameters, peak memory and
                                         training time (Pareto fronts), per-task change,
                                         learning curves

Seeds are aggregated as the mean with its 95 % Student t interval (`benchmark.stats`), and
each configuration is compared, paired over the seeds, with the best one and with full
fine-tuning; one that cannot be told apart from the best is marked as tied. With one seed the
page says so and prints the command that runs three (`benchmark.rerun`, which reads the
shipped config files to name only the overrides that differ). Δm (protocol §1.4) is recomputed
from the metrics against the single-task reference of the same group, matched by seed, or
the mean of the references when that seed has none; the `delta_m` stored in a record is never
used. Failed runs are listed as failed rows with their error. A malformed record is named on
stderr and skipped. The same records give byte-identical markdown, CSV and SVG files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
from tabulate import tabulate

from benchmark import curves, latex, plots, stats
from benchmark.config import check_output_dir
from benchmark.errors import UserError, report_user_error
from benchmark.metrics import delta_m
from benchmark.records import KNOWN_SCHEMAS, iter_records, slug
from benchmark.rerun import seeds_commands
from benchmark.tasks import TASKS

REFERENCE = "single_task"
FULL_FT = "full_ft"
MISSING = "–"

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
FIGURES = {
    "params": "delta_m_vs_params",
    "memory": "delta_m_vs_memory",
    "time": "delta_m_vs_time",
    "change": "per_task_change",
    "curves": "learning_curves",
}
TABLES = {"relative": "relative_performance", "published": "published_numbers"}
THREE_SEEDS = (0, 1, 2)
MEMORY_KINDS = {"cuda_allocated": "CUDA allocated", "cpu_rss_increase": "CPU RSS increase"}


# -- reading ---------------------------------------------------------------------------------


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_text(value) -> bool:
    return isinstance(value, str) and bool(value)


def record_problem(record: dict | None) -> str | None:
    """Why `record` cannot be reported, or None when it can."""
    if record is None:
        return "not valid JSON, or not a JSON object"
    checks = {
        "status": lambda v: v in ("ok", "failed"),
        "method": _is_text,
        "label": _is_text,
        "dataset": _is_text,
        "backbone": _is_text,
        "budget": _is_text,
        "seed": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "tasks": lambda v: isinstance(v, list) and bool(v) and all(t in TASKS for t in v),
    }
    for key, valid in checks.items():
        if key not in record:
            return f"missing field {key!r}"
        if not valid(record[key]):
            return f"invalid {key!r}: {record[key]!r}"
    if record["status"] == "failed":
        error = record.get("error")
        return None if error is None or isinstance(error, str) else "invalid 'error'"
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        return "missing field 'metrics'"
    for task in record["tasks"]:
        values = metrics.get(task)
        if not isinstance(values, dict) or not _is_number(values.get(TASKS[task].primary)):
            return f"no {TASKS[task].primary_key} in 'metrics'"
        if not all(v is None or _is_number(v) for v in values.values()):
            return f"non-numeric value in metrics[{task!r}]"
    params = record.get("params")
    if not isinstance(params, dict) or not _is_number(params.get("trainable")):
        return "missing 'params.trainable'"
    cost = record.get("cost", {})
    if cost is not None and not isinstance(cost, dict):
        return "invalid 'cost'"
    for key in ("train_seconds", "peak_memory_mb", "train_images_per_second"):
        value = (cost or {}).get(key)
        if value is not None and not _is_number(value):
            return f"invalid 'cost.{key}'"
    return None


def load(results_dir: Path) -> tuple[list[dict], list[str]]:
    """The valid records below `results_dir` (each with `_path`, relative to it) and one
    warning per record that was skipped."""
    if not results_dir.is_dir():
        raise UserError(
            f"no results directory at {results_dir}; run `python -m benchmark.run` first "
            "or pass results_dir=DIR"
        )
    records, warnings = [], []
    for path, record in iter_records(results_dir):
        if record is not None and record.get("schema") not in KNOWN_SCHEMAS:
            warnings.append(
                f"skipped record {path}: unknown schema version {record.get('schema')!r} "
                f"(this version reads {', '.join(map(str, KNOWN_SCHEMAS))}; a newer mtpeft "
                "wrote it?)"
            )
            continue
        problem = record_problem(record)
        if problem is not None:
            warnings.append(f"skipped malformed record {path}: {problem}")
            continue
        records.append({**record, "_path": path.relative_to(results_dir).as_posix()})
    if not records:
        found = "no valid result records" if warnings else "no result records"
        raise UserError(f"{found} under {results_dir}; run `python -m benchmark.run` first")
    return records, warnings


# -- aggregation ------------------------------------------------------------------------------


def _budget_config(record: dict) -> dict | None:
    config = record.get("config")
    budget = config.get("budget") if isinstance(config, dict) else None
    return budget if isinstance(budget, dict) else None


def budget_variants(records: list[dict]) -> dict[tuple[str, str], str]:
    """Names for budgets that share a name but not their settings (e.g. a sweep over
    `budget.lr`): `smoke (lr=0.01)`. Their runs are not comparable, so they form separate
    groups, named by the settings in which they differ."""
    variants: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in records:
        budget = _budget_config(r)
        if budget is not None:
            variants[r["budget"]][json.dumps(budget, sort_keys=True)] = budget
    names = {}
    for name, by_text in variants.items():
        if len(by_text) < 2:
            continue
        differing = sorted(
            {k for b in by_text.values() for k in b
             if len({json.dumps(v.get(k)) for v in by_text.values()}) > 1}
        )
        for text, budget in by_text.items():
            names[(name, text)] = f"{name} ({', '.join(f'{k}={budget.get(k)}' for k in differing)})"
    return names


def group_key(record: dict, variants: dict[tuple[str, str], str] | None = None) -> tuple:
    budget = record["budget"]
    config = _budget_config(record)
    if variants and config is not None:
        budget = variants.get((budget, json.dumps(config, sort_keys=True)), budget)
    return (record["dataset"], tuple(record["tasks"]), record["backbone"], budget)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    if not values:
        return None, None
    if len(values) == 1:
        return float(values[0]), None
    return statistics.fmean(values), statistics.stdev(values)


@dataclass
class Row:
    """One configuration label of a group: its runs and what is derived from them."""

    label: str
    method: str
    runs: list[dict]
    failed: bool = False
    delta_m: list[float] = field(default_factory=list)  # per seed, as `runs`
    change: dict[str, list[float]] = field(default_factory=dict)  # task -> per seed, %
    mean_reference_seeds: list[int] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return [r["seed"] for r in self.runs]

    def metric(self, task: str, name: str) -> list[float]:
        values = (r["metrics"].get(task, {}).get(name) for r in self.runs)
        return [float(v) for v in values if v is not None]

    def cost(self, key: str) -> list[float]:
        values = ((r.get("cost") or {}).get(key) for r in self.runs)
        return [float(v) for v in values if v is not None]

    def params(self, key: str) -> list[float]:
        values = ((r.get("params") or {}).get(key) for r in self.runs)
        return [float(v) for v in values if v is not None]

    @property
    def trainable(self) -> list[float]:
        """The trainable count, once (it is the same for every seed); empty when unknown."""
        return self.params("trainable")[:1]

    @property
    def memory_kinds(self) -> list[str]:
        return sorted({(r.get("cost") or {}).get("memory_kind") or "unknown" for r in self.runs})

    @property
    def mean_delta_m(self) -> float | None:
        return mean_std(self.delta_m)[0]

    @property
    def delta_m_by_seed(self) -> dict[int, float]:
        return dict(zip(self.seeds, self.delta_m)) if self.delta_m else {}


@dataclass
class Group:
    dataset: str
    tasks: list[str]
    backbone: str
    budget: str
    rows: list[Row]  # finished rows sorted by Δm, then failed rows
    metric_keys: list[tuple[str, str]]  # (task, metric), every metric present, primary first
    has_reference: bool
    notes: list[str]
    suffix: str = ""  # set by `build_groups` when two groups' names would collide

    @property
    def slug(self) -> str:
        name = slug(f"{self.dataset}-{self.backbone}-{self.budget}-{'-'.join(self.tasks)}")
        return name + self.suffix

    @property
    def title(self) -> str:
        return f"{self.dataset} · {self.backbone} · {self.budget} budget"

    @property
    def ok_rows(self) -> list[Row]:
        return [r for r in self.rows if not r.failed]

    @property
    def failed_rows(self) -> list[Row]:
        return [r for r in self.rows if r.failed]

    @property
    def max_seeds(self) -> int:
        return max((len(r.runs) for r in self.ok_rows), default=0)

    def standings(self) -> dict[str, stats.Standing]:
        """Each scored row against the best row (the first: rows are sorted by Δm) and
        against full fine-tuning, paired over the seeds on Δm."""
        scores = {r.label: r.delta_m_by_seed for r in self.ok_rows if r.delta_m_by_seed}
        full = next((r.label for r in self.ok_rows if r.method == FULL_FT), None)
        return stats.standings(scores, next(iter(scores), None), full)

    def full_ft_trainable(self) -> float | None:
        rows = [r for r in self.ok_rows if r.method == FULL_FT and r.params("trainable")]
        return mean_std(rows[0].params("trainable"))[0] if rows else None


def _run_identity(record: dict) -> tuple:
    """What a retry of the same run shares with it: method, seed and method options."""
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    return record["method"], record["seed"], repr(config.get("method"))


def build_group(key: tuple, records: list[dict]) -> Group:
    dataset, tasks, backbone, budget = key
    tasks = list(tasks)
    notes: list[str] = []
    ok: dict[tuple[str, int], dict] = {}
    for r in sorted((r for r in records if r["status"] == "ok"), key=lambda r: r["_path"]):
        seen = ok.setdefault((r["label"], r["seed"]), r)
        if seen is not r:
            notes.append(
                f"{r['label']} seed {r['seed']} has two finished records; reported "
                f"`{seen['_path']}`, ignored `{r['_path']}`."
            )
    finished = {_run_identity(r) for r in ok.values() if "config" in r}
    failed = []
    for r in sorted((r for r in records if r["status"] == "failed"), key=lambda r: r["_path"]):
        if "config" in r and _run_identity(r) in finished:
            notes.append(
                f"{r['label']} seed {r['seed']} failed once (`{r['_path']}`) and was re-run "
                "successfully; the failure is superseded."
            )
        else:
            failed.append(r)

    by_label: dict[str, list[dict]] = defaultdict(list)
    for r in ok.values():
        by_label[r["label"]].append(r)
    rows = [
        Row(label, runs[0]["method"], sorted(runs, key=lambda r: r["seed"]))
        for label, runs in by_label.items()
    ]

    refs = {r["seed"]: r["metrics"] for r in ok.values() if r["method"] == REFERENCE}
    mean_ref = None
    if refs:
        mean_ref = {
            t: {TASKS[t].primary: statistics.fmean(m[t][TASKS[t].primary] for m in refs.values())}
            for t in tasks
        }
    if mean_ref is not None:
        for row in rows:
            for run in row.runs:
                ref = refs.get(run["seed"])
                if ref is None:
                    ref = mean_ref
                    row.mean_reference_seeds.append(run["seed"])
                try:
                    row.delta_m.append(delta_m(run["metrics"], ref, tasks))
                    for t in tasks:
                        row.change.setdefault(t, []).append(delta_m(run["metrics"], ref, [t]))
                except ValueError as err:
                    notes.append(f"Δm of {row.label} seed {run['seed']} is undefined: {err}.")
                    row.delta_m, row.change = [], {}
                    break
    for row in rows:
        if row.mean_reference_seeds:
            seeds = ", ".join(map(str, row.mean_reference_seeds))
            notes.append(
                f"{row.label}: no single-task reference for seed {seeds}; Δm is taken against "
                "the mean of the references."
            )

    def order(row: Row) -> tuple:
        score = row.mean_delta_m
        missing = score is None or math.isnan(score)
        return (missing, 0.0 if missing else -score, plots.natural_key(row.label))

    rows.sort(key=order)
    failed_by_label: dict[str, list[dict]] = defaultdict(list)
    for r in failed:
        failed_by_label[r["label"]].append(r)
    for label in sorted(failed_by_label, key=plots.natural_key):
        runs = sorted(failed_by_label[label], key=lambda r: r["seed"])
        rows.append(Row(label, runs[0]["method"], runs, failed=True))

    metric_keys = []
    for t in tasks:
        names = {name for r in ok.values() for name in r["metrics"].get(t, {})}
        primary = TASKS[t].primary
        metric_keys += [(t, primary)] + [(t, n) for n in sorted(names - {primary})]
    return Group(dataset, tasks, backbone, budget, rows, metric_keys, bool(refs), notes)


def build_groups(records: list[dict]) -> list[Group]:
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    variants = budget_variants(records)
    for r in records:
        grouped[group_key(r, variants)].append(r)
    # Scores at different resolutions (448 vs each image's own size) are not comparable:
    # such a group splits by `eval_resolution`, named in the budget part of its title.
    split: dict[tuple, list[dict]] = defaultdict(list)
    for key, members in grouped.items():
        resolutions = {r["eval_resolution"] for r in members if r.get("eval_resolution")}
        for r in members:
            if len(resolutions) > 1 and r.get("eval_resolution"):
                budget = f"{key[3]} (scored at {r.get('eval_resolution')})"
                split[(*key[:3], budget)].append(r)
            else:
                split[key].append(r)
    groups = [build_group(key, split[key]) for key in sorted(split)]
    # `slug` folds "1e+40" and "1e-40" alike: groups whose names collide get a short hash
    names = defaultdict(list)
    for group in groups:
        names[group.slug].append(group)
    for same in names.values():
        if len(same) > 1:
            for group in same:
                key = json.dumps([group.dataset, group.tasks, group.backbone, group.budget])
                group.suffix = "-" + hashlib.sha256(key.encode()).hexdigest()[:8]
    return groups


def reference_command(group: Group) -> str:
    """The command that trains the group's missing single-task references, as it runs:
    the group's dataset, backbone and budget with every setting its runs changed from the
    shipped configuration (a swept `budget.lr`, smaller splits) as overrides."""
    seeds = sorted({s for row in group.rows for s in row.seeds})
    run = group.rows[0].runs[0] if group.rows and group.rows[0].runs else {}
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    budget = run.get("budget", group.budget)
    words = [f"method={REFERENCE}", f"dataset={group.dataset}",
             f"dataset.tasks=[{','.join(group.tasks)}]", f"backbone={group.backbone}",
             f"budget={budget}"]
    for part, choice in (("dataset", group.dataset), ("backbone", group.backbone),
                         ("budget", budget)):
        words += _changed(part, choice, config.get(part))
    if config.get("results_dir") not in (None, "results"):
        words.append(f"results_dir={_override_value(config['results_dir'])}")
    words.append(f"seed={','.join(map(str, seeds))}")
    return "python -m benchmark.run " + " ".join(words)


def _changed(part: str, choice: str, values) -> list[str]:
    """`part.key=value` overrides for the settings in `values` that differ from the shipped
    `conf/<part>/<choice>.yaml` (nothing when either is unknown)."""
    from omegaconf import OmegaConf

    path = Path(__file__).parent / "conf" / part / f"{choice}.yaml"
    if not isinstance(values, dict) or not path.exists():
        return []
    shipped = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return [
        f"{part}.{key}={_override_value(value)}"
        for key, value in values.items()
        if key not in ("name", "tasks") and key in shipped and shipped[key] != value
    ]


def _override_value(value) -> str:
    """`value` as hydra's override grammar reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    text = str(value)
    if isinstance(value, str) and not re.fullmatch(r"[\w./:+-]+", text):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


# -- tables ------------------------------------------------------------------------------------


def _md(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _number(value: float, digits: int, sign: bool = False) -> str:
    if math.isnan(value):
        return "NaN"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _stat(values: Sequence[float], digits: int, sign: bool = False) -> tuple[float | None, str]:
    """(mean rounded as shown, 'mean ± half-width of its 95 % interval') or (None, '–')."""
    found = stats.interval(values)
    if found is None:
        return None, MISSING
    mean, half = found.mean, found.half_width
    text = _number(mean, digits, sign)
    if half is not None and not math.isnan(half):
        text += f" ± {half:.{digits}f}"
    return (None if math.isnan(mean) else round(mean, digits)), text


def _ci_half(values: Sequence[float]) -> float | None:
    found = stats.interval(values)
    return None if found is None else found.half_width


def _comparison(found: stats.Comparison | None, digits: int = 2) -> tuple[None, str]:
    """'difference [low, high]', starred when the interval excludes zero."""
    if found is None:
        return None, MISSING
    d = found.difference
    if d.half_width is None:
        return None, f"{_number(d.mean, digits, True)} (n=1)"
    star = " *" if d.excludes_zero else ""
    return None, (f"{_number(d.mean, digits, True)} [{_number(d.low, digits, True)}, "
                  f"{_number(d.high, digits, True)}]{star}")


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


def _metric_header(task: str) -> str:
    """A task's primary metric as a column header, with the direction that is better."""
    spec = TASKS[task]
    arrow = "↑" if spec.higher_is_better else "↓"
    return f"{task} {METRIC_NAMES.get(spec.primary, spec.primary)} {arrow}"


def _error_text(run: dict) -> str:
    """A run's error on one line."""
    return " ".join(str(run.get("error") or "unknown error").split())


def table_columns(group: Group) -> list[Column]:
    columns = [Column("method", None, lambda r: (None, _md(r.label))),
               Column("n", None, lambda r: (None, str(len(r.runs))))]
    for t in group.tasks:
        spec = TASKS[t]
        columns.append(Column(
            _metric_header(t),
            "max" if spec.higher_is_better else "min",
            lambda r, t=t, m=spec.primary: _stat(r.metric(t, m), 2),
        ))
    columns.append(Column("Δm % ↑", "max", lambda r: _stat(r.delta_m, 2, sign=True)))
    if group.max_seeds >= 2 and group.has_reference:
        standing = group.standings()
        none = stats.Standing("")

        def verdict(r: Row) -> tuple[None, str]:
            return None, standing.get(r.label, none).verdict or MISSING

        columns.append(Column("vs best", None, verdict))
        columns.append(Column("Δm − best [95 % CI]", None,
                              lambda r: _comparison(standing.get(r.label, none).vs_best)))
        if any(r.method == FULL_FT for r in group.ok_rows):
            columns.append(Column(
                "Δm − full FT [95 % CI]", None,
                lambda r: _comparison(standing.get(r.label, none).vs_full_ft),
            ))
    columns.append(Column(
        "trainable M ↓", "min",
        lambda r: _stat([v / 1e6 for v in r.trainable], 2),
    ))
    full = group.full_ft_trainable()
    if full:
        columns.append(Column(
            "% of full FT ↓", "min",
            lambda r: _stat([100 * v / full for v in r.trainable], 1),
        ))
    suffix, mark_cpu = memory_note(group)

    def memory(row: Row) -> tuple[float | None, str]:
        value, text = _stat(row.cost("peak_memory_mb"), 0)
        if mark_cpu and value is not None and "cpu_rss_increase" in row.memory_kinds:
            text += " †"
        return value, text

    columns.append(Column(f"peak memory ({suffix}) ↓", "min", memory))
    unit, scale = time_unit(group)
    columns.append(Column(
        f"train time ({unit}) ↓", "min",
        lambda r: _stat([v / scale for v in r.cost("train_seconds")], 1 if scale == 1 else 2),
    ))
    columns.append(Column(
        "images/s ↑", "max", lambda r: _stat(r.cost("train_images_per_second"), 1),
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
        body.append([f"{_md(row.label)} (failed, seed {seeds})", "0"]
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
    headers = ["method", "source", *map(_metric_header, tasks),
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
            body.append(["", f"ours ({_md(row['label'])}): not run"]
                        + [MISSING] * (len(headers) - 2))
            continue
        body.append(
            ["", f"ours ({_md(mine.label)}, n={len(mine.runs)})"]
            + [_stat(mine.metric(t, TASKS[t].primary), 2)[1] for t in tasks]
            + [MISSING, _stat(mine.delta_m, 2, sign=True)[1],
               _stat([v / 1e6 for v in mine.trainable], 2)[1]]
        )
    align = ["left", "left"] + ["right"] * (len(headers) - 2)
    return headers, body, align


# -- CSV ---------------------------------------------------------------------------------------


def _csv_number(value: float | None) -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "nan"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(round(float(value), 4))


def summary_rows(group: Group) -> tuple[list[str], list[list[str]]]:
    primary = [(t, TASKS[t].primary) for t in group.tasks]
    full = group.full_ft_trainable()
    header = [
        "label", "method", "status", "n_seeds", "seeds", "delta_m", "delta_m_std",
        "delta_m_reference", "trainable_params", "total_params", "trainable_share_full_ft",
        "peak_memory_mb", "peak_memory_mb_std", "memory_kind", "train_seconds",
        "train_seconds_std", "train_images_per_second", "train_images_per_second_std",
    ]
    header += [f"{t}.{m}" for t, m in group.metric_keys]
    header += [f"{t}.{m}_std" for t, m in primary]
    header += [f"{t}.change" for t in group.tasks]
    header += ["error"]
    # appended later: 95 % t intervals and the paired comparisons (benchmark.stats)
    interval_of = ["delta_m", *(f"{t}.{m}" for t, m in group.metric_keys), "peak_memory_mb",
                   "train_seconds", "train_images_per_second"]
    header += [f"{name}_ci95_{end}" for name in interval_of for end in ("low", "high")]
    compared = ["vs_best", "vs_full_ft"]
    header += ["vs_best"] + [f"{c}_{part}" for c in compared
                             for part in ("delta_m", "ci95_low", "ci95_high", "excludes_zero",
                                          "n_seeds")]
    standing = group.standings()
    out = []
    for row in group.rows:
        if row.failed:
            errors = "; ".join(
                f"seed {r['seed']}: {_error_text(r)}"
                for r in row.runs
            )
            values = {"label": row.label, "method": row.method, "status": "failed",
                      "n_seeds": "0", "seeds": " ".join(map(str, row.seeds)), "error": errors}
            out.append([values.get(h, "") for h in header])
            continue
        trainable = mean_std(row.params("trainable"))[0]
        values = {
            "label": row.label, "method": row.method, "status": "ok",
            "n_seeds": str(len(row.runs)), "seeds": " ".join(map(str, row.seeds)),
            "delta_m_reference": (
                "" if not row.delta_m else "mean" if row.mean_reference_seeds else "seed"
            ),
            "trainable_params": _csv_number(trainable),
            "total_params": _csv_number(mean_std(row.params("total"))[0]),
            "trainable_share_full_ft": _csv_number(
                100 * trainable / full if full and trainable is not None else None
            ),
            "memory_kind": " ".join(k for k in row.memory_kinds if row.cost("peak_memory_mb")),
        }
        for name, samples in [
            ("delta_m", row.delta_m),
            ("peak_memory_mb", row.cost("peak_memory_mb")),
            ("train_seconds", row.cost("train_seconds")),
            ("train_images_per_second", row.cost("train_images_per_second")),
        ]:
            mean, std = mean_std(samples)
            values[name], values[f"{name}_std"] = _csv_number(mean), _csv_number(std)
        for t, m in group.metric_keys:
            mean, std = mean_std(row.metric(t, m))
            values[f"{t}.{m}"], values[f"{t}.{m}_std"] = _csv_number(mean), _csv_number(std)
        for t in group.tasks:
            values[f"{t}.change"] = _csv_number(mean_std(row.change.get(t, []))[0])
        samples = {"delta_m": row.delta_m, "peak_memory_mb": row.cost("peak_memory_mb"),
                   "train_seconds": row.cost("train_seconds"),
                   "train_images_per_second": row.cost("train_images_per_second"),
                   **{f"{t}.{m}": row.metric(t, m) for t, m in group.metric_keys}}
        for name in interval_of:
            found = stats.interval(samples[name])
            values[f"{name}_ci95_low"] = _csv_number(found and found.low)
            values[f"{name}_ci95_high"] = _csv_number(found and found.high)
        mine = standing.get(row.label, stats.Standing(""))
        values["vs_best"] = mine.verdict
        for name, found in (("vs_best", mine.vs_best), ("vs_full_ft", mine.vs_full_ft)):
            if found is not None:
                d = found.difference
                values[f"{name}_delta_m"] = _csv_number(d.mean)
                values[f"{name}_ci95_low"] = _csv_number(d.low)
                values[f"{name}_ci95_high"] = _csv_number(d.high)
                excludes = d.excludes_zero
                values[f"{name}_excludes_zero"] = "" if excludes is None else str(excludes).lower()
                values[f"{name}_n_seeds"] = str(len(found.seeds))
        out.append([values.get(h, "") for h in header])
    return header, out


def summary_csv(group: Group) -> str:
    header, rows = summary_rows(group)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


# -- figures -----------------------------------------------------------------------------------


def _points(group: Group, cost: Callable[[Row], list[float]]) -> list[plots.Point]:
    points = []
    for row in group.ok_rows:
        (x, _), (y, _) = mean_std(cost(row)), mean_std(row.delta_m)
        if x is not None and y is not None:
            points.append(plots.Point(row.label, x, y, _ci_half(cost(row)), _ci_half(row.delta_m)))
    return points


# The costs that Δm is traded against, per run (the figures and their Pareto fronts).
COSTS: dict[str, Callable[[Row], list[float]]] = {
    "params": lambda r: r.trainable,
    "memory": lambda r: r.cost("peak_memory_mb"),
    "time": lambda r: r.cost("train_seconds"),
}


def write_figures(group: Group, folder: Path, styles: dict) -> dict[str, Path]:
    """Draw the group's figures into `folder`; the PNG path of each figure drawn by key."""
    title = group.title
    drawn = {}
    learning = curves.group_curves(group.ok_rows, group.tasks)
    paths = plots.curves_figure(
        learning, styles, folder / FIGURES["curves"],
        title=f"{title}\nlearning curves (mean over seeds, band: 95 % interval)",
    )
    if paths:
        drawn["curves"] = paths[0]
    if not group.has_reference:
        return drawn
    unit, scale = time_unit(group)
    suffix, _ = memory_note(group)
    specs = {  # the axis unit of each cost, its label, log scale, its name
        "params": (1e6, "trainable parameters (M, log scale)", True, "trainable parameters"),
        "memory": (1.0, f"peak training memory ({suffix})", None, "peak training memory"),
        "time": (scale, f"training time ({unit})", None, "training time"),
    }
    for key, (unit_size, xlabel, log_x, what) in specs.items():
        def cost(r: Row, key=key, unit_size=unit_size) -> list[float]:
            return [v / unit_size for v in COSTS[key](r)]

        paths = plots.tradeoff_figure(
            _points(group, cost), styles, folder / FIGURES[key],
            title=f"{title}\nΔm against {what}", xlabel=xlabel, log_x=log_x,
        )
        if paths:
            drawn[key] = paths[0]
    changes = {
        row.label: {**{t: row.change.get(t, []) for t in group.tasks}, "Δm": row.delta_m}
        for row in group.ok_rows if row.method != REFERENCE
    }
    names = [f"{t}\n{METRIC_NAMES.get(TASKS[t].primary, TASKS[t].primary)}" for t in group.tasks]
    relabelled = {
        label: {name: values[t] for name, t in zip(names, group.tasks)} | {"Δm": values["Δm"]}
        for label, values in changes.items()
    }
    paths = plots.change_figure(
        relabelled, [*names, "Δm"], styles, folder / FIGURES["change"],
        title=f"{title}\nchange relative to single task, per task (sign-corrected)",
    )
    if paths:
        drawn["change"] = paths[0]
    return drawn


def _front_labels(group: Group, cost: Callable[[Row], list[float]]) -> list[str]:
    return plots.pareto_front({p.label: (p.x, p.y) for p in _points(group, cost)})


# -- pages -------------------------------------------------------------------------------------

FIGURE_ALT = {
    "params": "Δm against trainable parameters",
    "memory": "Δm against peak training memory",
    "time": "Δm against training time",
    "change": "per-task change relative to single task",
    "curves": "learning curves",
}
ERROR_BARS = ("Error bars: the 95 % confidence interval of the mean over seeds (Student t); "
              "none where a configuration has one seed.")
FIGURE_TEXT = {
    "params": "Δm against trainable parameters (log scale); dashed: the Pareto front "
              "(higher Δm, fewer parameters).",
    "memory": "Δm against peak training memory, with its Pareto front.",
    "time": "Δm against training time, with its Pareto front.",
    "change": "Change of each task's primary metric relative to the single-task reference, "
              "in percent and sign-corrected so that up is better; the last group is Δm, "
              "their mean.",
    "curves": "Learning curves: each task's mean training loss per epoch (unweighted) and, "
              "for runs with `eval_every=N`, the primary validation metric every N epochs; "
              "the line is the mean over seeds, the shaded band its 95 % confidence interval "
              "(Student t) where two or more seeds have the epoch. A loss still falling at "
              "the last epoch says the budget was too short to converge.",
}


def group_page(group: Group, figures: dict[str, Path]) -> str:
    ok = [run for row in group.ok_rows for run in row.runs]
    resolutions = sorted({str(r.get("eval_resolution")) for r in ok if "eval_resolution" in r})
    devices = sorted({str((r.get("cost") or {}).get("device")) for r in ok
                      if (r.get("cost") or {}).get("device")})
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
    _, mark_cpu = memory_note(group)
    if mark_cpu:
        notes.append("† peak memory measured as the rise of the process's resident memory on "
                     "a CPU, not the CUDA allocator's peak: compare only like with like.")
    lines += [f"- {_md(note)}" for note in notes]
    if notes:
        lines.append("")
    if group.failed_rows:
        lines += ["## Failed runs", ""]
        for row in group.failed_rows:
            for run in row.runs:
                error = _error_text(run).replace("`", "'")
                lines.append(f"- {_md(row.label)} seed {run['seed']} (`{run['_path']}`): "
                             f"`{error}`")
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for key in sorted(figures, key=list(FIGURES).index):
            png = figures[key]
            rel = f"{group.slug}/{png.name}"
            bars = f" {ERROR_BARS}" if key != "curves" else ""
            lines += [f"![{FIGURE_ALT[key]}]({rel})", "",
                      f"{FIGURE_TEXT[key]}{bars} "
                      f"[SVG]({group.slug}/{png.with_suffix('.svg').name})"]
            if key in COSTS:
                front = _front_labels(group, COSTS[key])
                lines.append(f"Pareto-optimal: {', '.join(_md(k) for k in front)}.")
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


def latex_tables(group: Group) -> dict[str, str]:
    """The LaTeX (booktabs) twin of each markdown table of the group's page, by name."""
    caption = (f"{group.dataset}, {group.backbone}, {group.budget} budget: "
               + ("mean ± half-width of the 95 % confidence interval over seeds "
                  "(Student t); * the paired interval excludes zero."
                  if group.max_seeds >= 2 else "one seed, no interval."))
    out = {"relative": latex.booktabs(*relative_cells(group), caption=caption,
                                      label=f"tab:{group.slug}")}
    published = published_cells(group)
    if published is not None:
        out["published"] = latex.booktabs(
            *published, caption=f"Beside {PUBLISHED_PASCAL_SWIN_T['source']}.",
            label=f"tab:{group.slug}-published",
        )
    return out


def index_page(groups: list[Group]) -> str:
    body = []
    for group in groups:
        # rows are sorted by Δm, so the first scored one that is not the reference is the best
        best = next(
            (row for row in group.ok_rows if row.method != REFERENCE and row.delta_m
             and row.mean_delta_m is not None and not math.isnan(row.mean_delta_m)),
            None,
        )
        body.append([
            f"[{group.title}]({group.slug}.md)",
            ", ".join(group.tasks),
            str(len(group.ok_rows)),
            str(sum(len(row.runs) for row in group.ok_rows)),
            str(sum(len(row.runs) for row in group.failed_rows)),
            f"{_md(best.label)} ({best.mean_delta_m:+.2f})" if best else MISSING,
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


def write_reports(records: list[dict], output_dir: Path, figures: bool = True) -> list[Path]:
    """Write every group's page, CSV and figures and the index; return the pages."""
    groups = build_groups(records)
    styles = {}
    if figures:
        styles = plots.assign_styles(
            {(r["method"], r["label"]) for r in records if r["status"] == "ok"}, REFERENCE
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    pages = []
    for group in groups:
        folder = output_dir / group.slug
        folder.mkdir(exist_ok=True)
        for name in [*FIGURES.values(), *TABLES.values()]:  # stale files of an earlier report
            for old in folder.glob(f"{name}.*"):
                old.unlink()
        drawn = write_figures(group, folder, styles) if figures else {}
        (folder / "summary.csv").write_text(summary_csv(group), encoding="utf-8")
        for key, text in latex_tables(group).items():
            (folder / f"{TABLES[key]}.tex").write_text(text, encoding="utf-8")
        page = output_dir / f"{group.slug}.md"
        page.write_text(group_page(group, drawn), encoding="utf-8")
        pages.append(page)
    (output_dir / "index.md").write_text(index_page(groups), encoding="utf-8")
    return pages


# -- command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    args = {"results_dir": "results", "output_dir": "reports"}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in args or not value:
            raise UserError(f"unknown argument {arg!r}; use results_dir=DIR output_dir=DIR")
        args[key] = value
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        args = parse_args(argv)
        records, warnings = load(Path(args["results_dir"]))
        check_output_dir(args["output_dir"], "output_dir")
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"read {len(records)} record(s) from {args['results_dir']}")
        matplotlib.use("Agg")
        pages = write_reports(records, Path(args["output_dir"]))
    except UserError as err:
        return report_user_error(err)
    print(f"wrote {len(pages)} group page(s), figures and CSVs; "
          f"index at {Path(args['output_dir']) / 'index.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
