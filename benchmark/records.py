"""Result records (protocol §5.2): where a run's record lives, and writing and reading it.

A record is a `Record`: built by `Record.finished` or `Record.failed` (the fields in the
order they are written), checked by `Record.problem` before the report uses it, and
migrated to today's names when read (`migrate_record`).

A run's directory is named by what determines its result: the method and its options, the
dataset (with the synthetic scenes' render version), the backbone, the budget, the seed and
the sha256 of the weights it starts from (so neither new scenes nor a changed checkpoint
ever mix their results with the old ones'). Paths and
bookkeeping keys (dataset root, cache directory, results directory, device) do not enter
the key, so moving the data does not invalidate finished runs. Layout:

    results_dir/<dataset>/<backbone>/<budget>/<method label>-seed<k>-<key>/result.json
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig

from benchmark.atomic import atomic_write
from benchmark.config.parts import RunSpec, parse
from benchmark.data.registry import KEYLESS_RENDER_VERSION, SYNTHETIC
from benchmark.tasks import TASKS

SCHEMA = 1
KNOWN_SCHEMAS = (1,)  # the record versions this code reads; others are skipped with a warning
REFERENCE_METHOD = "single_task"  # the method Δm is measured against (protocol §1.4)


def run_key(spec: RunSpec | DictConfig) -> str:
    """A hash of the settings that define a run: the method, dataset, backbone and budget
    groups, the synthetic scenes' render version, the seed and the weights' sha256 (not where
    files live, not options at their added-later default: `benchmark.config.parts.key_part`,
    and not render version 2: `benchmark.data.registry.content_version`)."""
    from benchmark.backbone import weights_sha256
    from benchmark.data.registry import content_version
    from benchmark.precision import key_budget

    spec = parse(spec)
    parts = dict(spec.identity.groups)
    parts["budget"] = key_budget(parts["budget"])  # `amp` and `precision`: one spelling
    parts["dataset"] = {**parts["dataset"], **content_version(spec.data.name)}
    parts["seed"] = spec.identity.seed
    parts["weights_sha256"] = weights_sha256(spec.backbone)
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "run"


def run_dir(spec: RunSpec | DictConfig, label: str) -> Path:
    spec = parse(spec)
    name = f"{slug(label)}-seed{spec.seed}-{run_key(spec)}"
    return Path(spec.results_dir) / spec.data.name / spec.backbone.name / spec.budget.name / name


def write_json_atomic(path: Path, data: dict) -> None:
    """Write to a temporary file in the same directory, then rename over `path`: a reader
    (or a crash) sees the old file or the new one, never half of one. Strict JSON: a NaN
    or an infinity is a ValueError, never a bare `NaN` token."""

    def write(f) -> None:
        json.dump(data, f, indent=1, default=str, allow_nan=False)
        f.write("\n")

    atomic_write(path, write, "w")


def read_record(path: Path) -> dict | None:
    """The record at `path`, or None if absent or unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return migrate_record(record) if isinstance(record, dict) else None


def migrate_record(record: dict) -> dict:
    """`record` in today's names (in place): the true root mean square of the normals angle,
    once stored as `normals.rmse`, is `normals.rms` (the papers' "rmse" is the mean angle,
    `normals.mean`); a record from before `data_version` existed was of render-2 scenes on
    the synthetic benchmark, and of no version on a real dataset."""
    if "data_version" not in record and isinstance(record.get("dataset"), str):
        legacy = KEYLESS_RENDER_VERSION if record["dataset"] == SYNTHETIC else None
        record["data_version"] = legacy
    metrics = record.get("metrics")
    normals = metrics.get("normals") if isinstance(metrics, dict) else None
    if isinstance(normals, dict) and "rmse" in normals and "rms" not in normals:
        normals["rms"] = normals.pop("rmse")
    return record


# The fields of a record in the order they are written; a failed run's record has those
# of `Run` and `error` only.
FIELDS = (
    "schema", "status", "error", "method", "label", "method_config", "dataset",
    "data_version", "tasks",
    "backbone", "budget", "seed", "eval_resolution", "params", "metrics", "primary",
    "delta_m", "reference", "weights_sha256", "cost", "final_loss", "curves", "run_dir",
    "config", "versions",
)


@dataclass(frozen=True)
class Run:
    """What every record says about its run, finished or failed."""

    method: str
    label: str
    method_config: dict
    dataset: str
    data_version: int | None  # `benchmark.data.registry.data_version`
    tasks: list[str]
    backbone: str
    budget: str
    seed: int
    eval_resolution: str
    weights_sha256: str | None
    config: dict
    versions: dict


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_text(value) -> bool:
    return isinstance(value, str) and bool(value)


# The fields every record must have, and what a valid value is.
_REQUIRED = {
    "status": lambda v: v in ("ok", "failed"),
    "method": _is_text,
    "label": _is_text,
    "dataset": _is_text,
    "backbone": _is_text,
    "budget": _is_text,
    "seed": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "tasks": lambda v: isinstance(v, list) and bool(v) and all(t in TASKS for t in v),
}


class Record(dict):
    """A result record: the JSON object of `result.json`, its fields in `FIELDS` order."""

    @classmethod
    def _of(cls, run: Run, **fields) -> Record:
        values = {"schema": SCHEMA, **fields, **asdict(run)}
        return cls((key, values[key]) for key in FIELDS if key in values)

    @classmethod
    def finished(
        cls, run: Run, *, params: dict, metrics: dict, delta_m: float | None,
        reference: str | None, cost: dict, final_loss: dict, curves: dict, run_dir: str,
    ) -> Record:
        """The record of a run that finished; `primary` names each task's primary metric."""
        primary = {t: TASKS[t].primary_key for t in run.tasks}
        return cls._of(
            run, status="ok", error=None, params=params, metrics=metrics, primary=primary,
            delta_m=delta_m, reference=reference, cost=cost, final_loss=final_loss,
            curves=curves, run_dir=run_dir,
        )

    @classmethod
    def failed(cls, run: Run, error: str) -> Record:
        """The record of a run that stopped with `error`."""
        return cls._of(run, status="failed", error=error)

    @staticmethod
    def unknown_schema(record: dict) -> str | None:
        """Why this code cannot read `record`'s version, or None when it can."""
        if record.get("schema") in KNOWN_SCHEMAS:
            return None
        return (f"unknown schema version {record.get('schema')!r} (this version reads "
                f"{', '.join(map(str, KNOWN_SCHEMAS))}; a newer mtpeft wrote it?)")

    @staticmethod
    def problem(record: dict | None) -> str | None:
        """Why `record` cannot be reported, or None when it can."""
        if record is None:
            return "not valid JSON, or not a JSON object"
        for key, valid in _REQUIRED.items():
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


def finished_record(directory: Path) -> dict | None:
    record = read_record(directory / "result.json")
    return record if record and record.get("status") == "ok" else None


def iter_records(results_dir: Path) -> Iterator[tuple[Path, dict | None]]:
    """Every `result.json` below `results_dir` with its parsed content (None if malformed)."""
    for path in sorted(Path(results_dir).rglob("result.json")):
        yield path, read_record(path)


def clear_leftovers(directory: Path, keep_checkpoints: bool = False) -> list[Path]:
    """Remove what a finished run no longer needs (checkpoints unless kept, finished-group
    files, temporary files, a dead process's lock) when no live process holds the run;
    return what was removed."""
    leftovers = [*directory.glob("group-*.json"), *directory.glob(".*.tmp")]
    if not keep_checkpoints:
        leftovers += directory.glob("checkpoint-*.pt")
    if not leftovers and not (directory / "lock").exists():
        return []
    try:
        with run_lock(directory):  # takes over a dead process's lock, releases it after
            for path in leftovers:
                path.unlink(missing_ok=True)
    except RunBusy:  # someone is re-running it (force=true): theirs to clean
        return []
    return leftovers


class RunBusy(RuntimeError):
    """Another live process holds the run's lock."""


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _job() -> dict:
    """This process's SLURM job and how often it was requeued (nothing outside SLURM)."""
    if "SLURM_JOB_ID" not in os.environ:
        return {}
    return {
        "slurm_job": os.environ["SLURM_JOB_ID"],
        "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
    }


def _requeued_from(holder: dict | None, me: dict) -> bool:
    """Whether `holder` is this SLURM job before a requeue (the job id stays, the restart
    count grows): it is gone, wherever it ran."""
    if holder is None or "slurm_job" not in me or holder.get("slurm_job") != me["slurm_job"]:
        return False
    restart = holder.get("slurm_restart")
    return isinstance(restart, int) and restart < me["slurm_restart"]


@contextlib.contextmanager
def run_lock(directory: Path) -> Iterator[None]:
    """Hold `directory/lock` while a run trains, so that two sweeps sharing a results
    directory never train (and write) the same run at once. A lock left by a dead process
    of this host is taken over, and so is one left by an earlier incarnation of this SLURM
    job (a job requeued after a time-out may start on another host); any other lock of
    another host is respected (its file names the holder; delete it if that job is gone)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "lock"
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), **_job()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = read_record(path)
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue  # released meanwhile
            unreadable_and_old = holder is None and age > 60
            dead_here = (
                holder is not None and holder.get("host") == me["host"]
                and not _alive(holder.get("pid"))
            )
            if unreadable_and_old or dead_here or _requeued_from(holder, me):
                path.unlink(missing_ok=True)
                continue
            who = "another process" if holder is None else (
                f"process {holder.get('pid')} on {holder.get('host')}"
            )
            raise RunBusy(
                f"{directory} is being trained by {who} (delete {path} if not)"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise RunBusy(f"could not take the lock {path}")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
