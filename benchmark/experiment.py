"""One run: a resolved configuration in, a result record out (protocol §5.2).

configuration -> method -> data -> model(s) -> train -> evaluate -> Δm -> record. The
single-task reference that Δm needs is itself a run: it is looked up by its own key and
trained first when it does not exist yet, so every later run of the same setting reuses it.

Under torchrun every rank calls `run_experiment` with the same configurations in the same
order; rank 0 decides whether a run is skipped, busy or resumed and broadcasts it, holds
the run's lock and writes its files, and every rank returns the same record.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import platform
import subprocess
import traceback
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from benchmark import distributed
from benchmark.backbone import weights_sha256
from benchmark.config import CONF_DIR, instantiate_method
from benchmark.config.parts import DataSpec, RunSpec, parse
from benchmark.cost import device_name
from benchmark.data import MultiTaskData, dataset_info, load_dataset
from benchmark.data.registry import data_version
from benchmark.distributed import resolve_device
from benchmark.errors import UserError
from benchmark.metrics import delta_m
from benchmark.model import build_model
from benchmark.records import (
    REFERENCE_METHOD,
    Record,
    Run,
    RunBusy,
    clear_leftovers,
    finished_record,
    read_record,
    run_dir,
    run_lock,
    write_json_atomic,
)
from benchmark.train import GroupResult, TrainingDiverged, execution_cost, train_and_evaluate


def reference_config(spec: RunSpec | DictConfig, **top) -> RunSpec:
    """The same setting (dataset, backbone, budget, seed) with the single-task method (and
    the top-level keys `top` changed)."""
    with open(CONF_DIR / "method" / f"{REFERENCE_METHOD}.yaml") as f:
        return parse(spec).with_method(OmegaConf.load(f), **top)


class DataCache:
    """Keeps the last dataset loaded, so a sweep over methods loads it once."""

    def __init__(self):
        self._key: DataSpec | None = None
        self._data: MultiTaskData | None = None

    def get(self, data: DataSpec | DictConfig, progress: bool) -> MultiTaskData:
        data = DataSpec.of(data)
        if data != self._key:
            self._data = None  # let the previous dataset (and its GPU copy) go first
            with distributed.main_first():  # rank 0 renders or builds the cache alone
                self._data = load_dataset(data, progress=progress and distributed.is_main())
            self._key = data
        return self._data


class RunFailed(RuntimeError):
    """A run stopped with an error; its failed record has been written."""


class NotFinite(RuntimeError):
    """A final metric (or Δm) of a run is NaN or infinite: the run failed."""


def check_finite(metrics: dict[str, dict[str, float]]) -> None:
    for task, values in metrics.items():
        for name, value in values.items():
            if value is not None and not math.isfinite(value):
                raise NotFinite(f"the final metric {task}.{name} is {value}")


def failure_message(err: BaseException) -> str:
    """A failed run's `error`: the exception, a full disk said in plain words."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" writing {err.filename}" if err.filename else ""
        return (f"no space left on device{where}; free space under results_dir and run the "
                "same command again (the run resumes from its last checkpoint)")
    return f"{type(err).__name__}: {err}"


def run_experiment(
    cfg: DictConfig | RunSpec,
    cache: DataCache | None = None,
    log=tqdm.write,
    failures: list[str] | None = None,
    tried_references: set[Path] | None = None,
) -> dict:
    """Train and evaluate `cfg` unless its record exists; return the record.

    Raises `RunBusy` when another process holds the run, `RunFailed` (after writing a
    record with `status: failed`) when training or evaluation fails, and `UserError` on bad
    input. A failure of the single-task reference that this run trains first does not stop
    this run: it is appended to `failures`. Under torchrun, a failure that need not have
    happened on every rank (anything but a diverging loss, whose test uses the loss of all
    ranks) is re-raised as it is: the other ranks may be waiting for this one, and ending
    the process lets torchrun stop them. A reference that failed is added to
    `tried_references` (a sweep's set), and a later run of the sweep that needs it does not
    train it again.

    A finished run's leftovers (its checkpoints, group files and temporary files, from a
    process killed after it wrote the record) are removed when the run is skipped.
    """
    spec = parse(cfg)  # the configuration's typed parts, each handed to its layer
    world = distributed.current()
    if not world.is_main:
        log = _quiet
    cache = cache or DataCache()
    method = instantiate_method(spec.method.node)
    directory = run_dir(spec, method.label)
    done = None if spec.force else distributed.broadcast(finished_record(directory))
    if done is not None:
        log(f"skip {method.label} seed {spec.seed}: finished in {directory} (force=true re-runs)")
        if world.is_main:
            clear_leftovers(directory, keep_checkpoints=spec.keep_checkpoints)
        return done
    with _lock_on_main(directory):
        if world.is_main:
            if spec.force:
                clear_run_state(directory)
            elif run_state_files(directory):
                log(f"resuming {method.label} seed {spec.seed} from {directory}")
        distributed.barrier()  # nobody looks for checkpoints before rank 0 cleared them
        reference = None
        if method.name != REFERENCE_METHOD:
            reference = ensure_reference(spec, cache, log, failures, tried_references)
        record = None
        try:
            results = train_groups(method, spec, directory, cache)
            check_finite({t: m for r in results for t, m in r.metrics.items()})
            if world.is_main:
                if reference is None and method.name != REFERENCE_METHOD:
                    reference = finished_record(reference_dir(spec))  # trained meanwhile?
                record = make_record(spec, method, directory, results, reference)
                if record["delta_m"] is not None and not math.isfinite(record["delta_m"]):
                    raise NotFinite(f"Δm is {record['delta_m']}")
                (directory / "config.yaml").write_text(spec.yaml)
                write_json_atomic(directory / "result.json", record)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                traceback.print_exc()
            message = failure_message(err)
            if world.is_main:
                try:
                    write_json_atomic(
                        directory / "result.json", failed_record(spec, method, message)
                    )
                except OSError as again:  # the disk is still full: say so, go on
                    log(f"could not record the failure in {directory}: {failure_message(again)}")
            if method.name == REFERENCE_METHOD and tried_references is not None:
                tried_references.add(directory)
            if world.distributed and not isinstance(err, TrainingDiverged | NotFinite):
                raise
            raise RunFailed(message) from None
        if world.is_main and not spec.keep_checkpoints:
            clear_run_state(directory)
        record = distributed.broadcast(record)
    log(summary_line(record))
    return record


def _quiet(_: str) -> None:
    """The log of ranks other than 0."""


@contextlib.contextmanager
def _lock_on_main(directory: Path):
    """`run_lock` taken by rank 0 alone; every rank raises `RunBusy` if rank 0 could not
    take it."""
    with contextlib.ExitStack() as stack:
        busy = None
        if distributed.is_main():
            try:
                stack.enter_context(run_lock(directory))
            except RunBusy as err:
                busy = str(err)
        busy = distributed.broadcast(busy)
        if busy is not None:
            raise RunBusy(busy)
        yield


def reference_dir(spec: RunSpec | DictConfig) -> Path:
    ref = reference_config(spec)
    return run_dir(ref, instantiate_method(ref.method.node).label)


def ensure_reference(
    spec: RunSpec,
    cache: DataCache | None,
    log,
    failures: list[str] | None,
    tried: set[Path] | None = None,
) -> dict | None:
    """The single-task record of `spec`'s setting, trained first if missing. None (and Δm
    left empty) when it fails, failed earlier in this sweep (`tried`), or another process is
    training it right now."""
    directory = reference_dir(spec)
    reference = distributed.broadcast(finished_record(directory))
    if reference is not None:
        return reference
    if tried is not None and directory in tried:
        log(f"the single-task reference seed {spec.seed} failed earlier in this sweep; "
            "Δm stays empty")
        return None
    log("Δm needs the single-task reference of this setting: training it first")
    try:
        return run_experiment(reference_config(spec, force=False), cache, log,
                              tried_references=tried)
    except RunBusy as err:
        log(f"{err}; this run's Δm is filled in if the reference finishes first")
    except RunFailed as err:
        log(f"FAILED the single-task reference seed {spec.seed}: {err}; Δm stays empty")
        if tried is not None:
            tried.add(directory)
        if failures is not None:
            failures.append(f"{REFERENCE_METHOD} seed {spec.seed} (reference): {err}")
    return None


def train_groups(method, spec: RunSpec, directory: Path, cache: DataCache) -> list[GroupResult]:
    """Train one model per task group; a group finished before an interruption is reused."""
    device = resolve_device(spec.device)
    info = dataset_info(spec.data)
    data = cache.get(spec.data, spec.progress)
    groups = method.task_groups(info.tasks)
    results = []
    for i, tasks in enumerate(groups):
        saved = directory / f"group-{i}.json"
        previous = distributed.broadcast(read_record(saved))
        if previous is not None and previous.get("tasks") == list(tasks):
            results.append(GroupResult(**previous))
            continue
        torch.manual_seed(spec.seed)
        model = build_model(method, spec.backbone, info, tasks, drop_path=spec.budget.drop_path)
        desc = method.label + (f" [{'+'.join(tasks)}]" if len(groups) > 1 else "")
        result = train_and_evaluate(
            model, data, spec.budget, device, spec.seed, spec.progress, desc,
            checkpoint=directory / f"checkpoint-{i}.pt",
            checkpoint_every=spec.checkpoint_every,
            execution=spec.execution,
        )
        if distributed.is_main():
            write_json_atomic(saved, asdict(result))
        results.append(result)
        del model
    return results


def fill_delta_m(configs: list[DictConfig]) -> int:
    """Fill in Δm in the finished records of `configs` that lack it because their reference
    was still training elsewhere when they finished and exists now; the number filled."""
    filled = 0
    for spec in map(parse, configs):
        if spec.method.name == REFERENCE_METHOD:
            continue
        directory = run_dir(spec, instantiate_method(spec.method.node).label)
        record = finished_record(directory)
        if record is None or record.get("delta_m") is not None:
            continue
        reference = finished_record(reference_dir(spec))
        if reference is None:
            continue
        try:
            score = delta_m(record["metrics"], reference["metrics"], record["tasks"])
        except (KeyError, ValueError):
            continue
        if not math.isfinite(score):
            continue
        record.update(delta_m=score, reference=reference.get("run_dir"))
        write_json_atomic(directory / "result.json", record)
        filled += 1
    return filled


def run_state_files(directory: Path) -> list[Path]:
    """The checkpoints and finished-group records that a run resumes from."""
    return [*directory.glob("checkpoint-*.pt"), *directory.glob("group-*.json")]


def clear_run_state(directory: Path) -> None:
    for path in run_state_files(directory):
        path.unlink(missing_ok=True)


def failed_record(spec: RunSpec, method, message: str) -> dict:
    return Record.failed(Run(
        method=method.name,
        label=method.label,
        method_config=spec.method.options,
        dataset=spec.data.name,
        data_version=data_version(spec.data.name),
        tasks=list(spec.data.tasks),
        backbone=spec.backbone.name,
        budget=spec.budget.name,
        seed=spec.seed,
        eval_resolution=dataset_info(spec.data).eval_resolution,
        weights_sha256=weights_sha256(spec.backbone),
        config=spec.config,
        versions=versions(),
    ), message)


def make_record(
    spec: RunSpec, method, directory: Path, results: list[GroupResult], reference
) -> dict:
    device = resolve_device(spec.device)
    info = dataset_info(spec.data)
    metrics = {task: m for r in results for task, m in r.metrics.items()}
    metrics = {task: metrics[task] for task in info.tasks}
    if method.name == REFERENCE_METHOD:
        score = delta_m(metrics, metrics, info.tasks)  # the reference itself: 0 by definition
    elif reference is not None:
        score = delta_m(metrics, reference["metrics"], info.tasks)
    else:
        score = None
    seconds = sum(r.train_seconds for r in results)
    images = sum(r.train_images for r in results)
    peaks = [r.peak_memory_mb for r in results if r.peak_memory_mb is not None]
    run = Run(
        method=method.name,
        label=method.label,
        method_config=spec.method.options,
        dataset=info.name,
        data_version=data_version(info.name),
        tasks=info.tasks,
        backbone=spec.backbone.name,
        budget=spec.budget.name,
        seed=spec.seed,
        eval_resolution=info.eval_resolution,
        weights_sha256=weights_sha256(spec.backbone),
        config=spec.config,
        versions=versions(),
    )
    return Record.finished(
        run,
        params={
            "trainable": sum(r.trainable for r in results),
            "total": sum(r.total for r in results),
            "decoders": sum(r.decoders for r in results),
        },
        metrics=metrics,
        delta_m=score,
        reference=None if reference is None else reference.get("run_dir"),
        cost={
            "train_seconds": seconds,
            "checkpoint_seconds": sum(r.checkpoint_seconds for r in results),
            "train_images": images,
            "train_images_per_second": images / seconds if seconds else None,
            "peak_memory_mb": max(peaks) if peaks else None,
            "memory_kind": results[0].memory_kind,
            "device": device_name(device),
            "world_size": distributed.current().size,
            **execution_cost(results),
        },
        final_loss={"+".join(r.tasks): r.final_loss for r in results},
        curves=learning_curves(results),
        run_dir=str(directory),
    )


def learning_curves(results: list[GroupResult]) -> dict:
    """The record's `curves`: per task the mean training loss of each epoch (index 0 is
    epoch 1), and with `eval_every` the validation metrics of every evaluated epoch, the
    task groups of one method merged. Non-finite values become null (strict JSON)."""

    def finite(value):
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [finite(v) for v in value]
        return value if value is None or math.isfinite(value) else None

    val: dict[int, dict] = {}
    for r in results:
        for point in r.val_curve:
            val.setdefault(point["epoch"], {}).update(point["metrics"])
    return finite({
        "train_loss": {t: c for r in results for t, c in r.loss_curve.items()},
        "val": [{"epoch": epoch, "metrics": val[epoch]} for epoch in sorted(val)],
    })


def summary_line(record: dict) -> str:
    parts = []
    for task, key in record["primary"].items():
        metric = key.split(".", 1)[1]
        parts.append(f"{key} {record['metrics'][task][metric]:.2f}")
    if record["delta_m"] is not None:
        parts.append(f"Δm {record['delta_m']:+.2f}%")
    parts.append(f"{record['params']['trainable'] / 1e6:.2f} M trainable")
    parts.append(f"{record['cost']['train_seconds']:.0f} s")
    return f"{record['label']} seed {record['seed']}: " + " | ".join(parts)


def versions() -> dict:
    import timm

    from benchmark import __version__

    out = {
        "mtpeft": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cuda": torch.version.cuda,
    }
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5,
        )
        out["commit"] = commit.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["commit"] = None
    return out
