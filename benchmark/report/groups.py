"""Comparison groups: the records that can be compared, and what is derived from them.

A group is one dataset, task set, backbone and budget (budgets that share a name but not
their settings, and scores taken at different resolutions, form groups of their own). Its
rows are the configuration labels: a label's runs are its seeds, Δm (protocol §1.4) is
recomputed from the metrics against the single-task reference of the same seed, or the mean
of the references when that seed has none; the `delta_m` stored in a record is never used.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmark.metrics import delta_m
from benchmark.records import REFERENCE_METHOD, slug
from benchmark.report import statistics as stats
from benchmark.report.text import natural_key
from benchmark.tasks import TASKS

FULL_FT = "full_ft"


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

    refs = {r["seed"]: r["metrics"] for r in ok.values() if r["method"] == REFERENCE_METHOD}
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
        return (missing, 0.0 if missing else -score, natural_key(row.label))

    rows.sort(key=order)
    failed_by_label: dict[str, list[dict]] = defaultdict(list)
    for r in failed:
        failed_by_label[r["label"]].append(r)
    for label in sorted(failed_by_label, key=natural_key):
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
    # Records of different scenes (render versions of the synthetic benchmark) are not
    # comparable either: such a group splits by `data_version`, named like resolutions.
    by_version: dict[tuple, list[dict]] = defaultdict(list)
    for key, members in grouped.items():
        versions = {r.get("data_version") for r in members}
        for r in members:
            if len(versions) > 1:
                by_version[(*key[:3], f"{key[3]} (render {r.get('data_version')})")].append(r)
            else:
                by_version[key].append(r)
    grouped = by_version
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
