"""A sweep handed to one of hydra's launchers: `python -m benchmark.run ... hydra/launcher=NAME`.

`benchmark.run` composes and checks every configuration itself (it has no `@hydra.main`).
When the command line also overrides hydra's own configuration (`hydra/launcher=...`,
`hydra.launcher.timeout_min=...`), it builds the job list here and gives it to the launcher
through hydra's launcher API, one job per sweep point, in two waves:

1. the single-task references that the sweep needs and that are not finished (or that the
   sweep names itself), so that every later run finds its Δm reference;
2. every other run.

Runs that are finished are left out (`force=true` keeps them), exactly as a sweep in one
process skips them; each job then resumes its run from the run's checkpoint if it finds
one. A job composes its configuration from the same overrides, with `results_dir` made
absolute, and calls `run_point`.

Launchers:

- `hydra/launcher=slurm` (`conf/hydra/launcher/slurm.yaml`, over the submitit plugin's
  `submitit_slurm`): one SLURM job per sweep point. On a time-out submitit requeues the
  job, which resumes from the run's last checkpoint (`checkpoint_every`).
- `hydra/launcher=submitit_local`: the same jobs as processes of this machine.
- `hydra/launcher=joblib`: several jobs at once on one machine (`hydra.launcher.n_jobs`);
  with `device=auto` and several GPUs each job takes a GPU no other job holds
  (`claimed_gpu`).
- `hydra/launcher=basic`: hydra's default, the jobs one after the other in this process.

Hydra's files (each job's resolved configuration and log, submitit's folders) go under
`results_dir/.hydra/<date>_<time>-<pid>/`, never into the working directory.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from omegaconf import DictConfig, read_write

from benchmark import distributed
from benchmark.errors import UserError, first_line

HYDRA_DIR = ".hydra"
INSTALL_HINT = "submitit_slurm, submitit_local, slurm and joblib need pip install 'mtpeft[cluster]'"


def override_key(text: str) -> str:
    """The key or group an override sets (`method`, `budget.lr`, `hydra/launcher`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_override(text).key_or_group
    except HydraException as err:
        raise UserError(f"cannot parse the override {text!r}: {first_line(err)}") from None


def is_hydra_override(text: str) -> bool:
    """Whether `text` overrides hydra's own configuration rather than the benchmark's."""
    return re.split(r"[./]", override_key(text), maxsplit=1)[0] == "hydra"


def _set(overrides: Sequence[str], key: str, value: str) -> list[str]:
    """`overrides` with every override of `key` replaced by `key=value`."""
    kept = [o for o in overrides if override_key(o) != key]
    return [*kept, f"{key}={value}"]


def _quoted(path: str) -> str:
    if re.fullmatch(r"[\w./:+-]+", path):
        return path
    escaped = path.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def reference_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides of the single-task reference of the run `overrides` compose: the same
    setting with `method=single_task` (and none of the method's options), never forced
    (as `experiment.ensure_reference` trains it)."""
    from benchmark.records import REFERENCE_METHOD

    kept = [o for o in overrides if override_key(o).split(".")[0] != "method"]
    return _set([*kept, f"method={REFERENCE_METHOD}"], "force", "false")


def plan_waves(
    configs: Sequence[DictConfig], combos: Sequence[Sequence[str]]
) -> tuple[list[list[list[str]]], list[str]]:
    """The jobs of a sweep, as override lists in waves (references, then the rest), and a
    line for every run left out because it is finished. `configs[i]` is what `combos[i]`
    composes to."""
    from benchmark.config import instantiate_method
    from benchmark.experiment import reference_dir
    from benchmark.records import REFERENCE_METHOD, finished_record, run_dir

    references: dict[Path, list[str]] = {}
    others: list[list[str]] = []
    skipped: list[str] = []
    # the sweep's own single-task runs first, so that they stand for the references
    pairs = sorted(zip(configs, combos), key=lambda p: p[0].method.name != REFERENCE_METHOD)
    for cfg, combo in pairs:
        label = instantiate_method(cfg.method).label
        directory = run_dir(cfg, label)
        overrides = _set(combo, "results_dir", _quoted(os.path.abspath(cfg.results_dir)))
        if not cfg.force and finished_record(directory) is not None:
            skipped.append(f"skip {label} seed {cfg.seed}: finished in {directory}")
            continue
        if cfg.method.name == REFERENCE_METHOD:
            references[directory] = overrides
            continue
        others.append(overrides)
        reference = reference_dir(cfg)
        if reference not in references and finished_record(reference) is None:
            references[reference] = reference_overrides(overrides)
    waves = [wave for wave in (list(references.values()), others) if wave]
    return waves, skipped


def sweep_dir(results_dir: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return Path(os.path.abspath(results_dir)) / HYDRA_DIR / f"{stamp}-{os.getpid()}"


def launch_sweep(
    configs: Sequence[DictConfig],
    combos: Sequence[Sequence[str]],
    hydra_overrides: Sequence[str],
) -> int:
    """Run the sweep through the launcher that `hydra_overrides` choose; the exit status of
    `benchmark.run` (0 all finished, 1 some failed)."""
    from hydra import initialize_config_module
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.errors import HydraException
    from hydra.types import HydraContext, RunMode
    from omegaconf.errors import OmegaConfBaseException

    if distributed.launched():
        raise UserError(
            "hydra launchers and torchrun do not combine; start the sweep once, with "
            "hydra.launcher.tasks_per_node for several GPUs per job (submitit)"
        )
    given = {override_key(o) for o in hydra_overrides}
    defaults = {
        "hydra.sweep.dir": _quoted(str(sweep_dir(configs[0].results_dir))),
        "hydra.sweep.subdir": "${hydra.job.num}",
        "hydra.job.chdir": "false",
    }
    overrides = [f"{k}={v}" for k, v in defaults.items() if k not in given]
    overrides += list(hydra_overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("benchmark.conf", version_base="1.3", job_name="benchmark"):
            hydra = GlobalHydra.instance().hydra
            try:
                config = hydra.compose_config(
                    "config", overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=True
                )
            except (HydraException, OmegaConfBaseException) as err:
                text = first_line(err)
                if "hydra/launcher" in text:
                    text += f" ({INSTALL_HINT})"
                raise UserError(text) from None
            waves, skipped = plan_waves(configs, combos)
            for line in skipped:
                print(line)
            if not waves:
                return 0
            HydraConfig.instance().set_config(config)
            context = HydraContext(
                config_loader=hydra.config_loader, callbacks=Callbacks(config)
            )
            launcher = Plugins.instance().instantiate_launcher(
                hydra_context=context, task_function=run_point, config=config
            )
            returns = []
            first = 0
            for wave in waves:
                returns += launcher.launch(wave, initial_job_idx=first)
                first += len(wave)
    finally:
        GlobalHydra.instance().clear()
    return _summary(returns, [os.path.abspath(c.results_dir) for c in configs])


def _summary(returns, places: Sequence[str] = ()) -> int:
    """Print what each of the launcher's jobs returned (on stdout, as a sweep in one process
    prints each run's), then the count of jobs and `print_summary`'s lines."""
    from hydra.core.utils import JobStatus

    failures, busy = [], []
    finished = 0  # `failures` also lists the references that failed inside a job
    for ret in returns:
        if ret.status != JobStatus.COMPLETED:
            failures.append(f"job {' '.join(ret.overrides or [])}: {ret._return_value!r}")
            continue
        outcome = ret.return_value
        print(f"{outcome['status']}: {outcome['run']}")
        failures += outcome["failures"]
        if outcome["status"] == "failed":
            failures.append(f"{outcome['run']}: {outcome['error']}")
        elif outcome["status"] == "busy":
            busy.append(outcome["run"])
        else:
            finished += 1
    print(f"{len(returns)} jobs: {finished} finished", file=sys.stderr)
    return print_summary(failures, busy, places)


def print_summary(failures: Sequence[str], busy: Sequence[str], places: Sequence[str]) -> int:
    """The end of a sweep, in one process or through a launcher, on stderr: the runs left to
    other processes, where the records are, the runs that failed; the exit status (0 all
    finished, 1 some failed)."""
    if busy:
        print(f"{len(busy)} runs were left to the processes training them", file=sys.stderr)
    for place in sorted(set(places)):
        print(f"records are in {place}/; the report: python -m benchmark.report "
              f"results_dir={place}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} runs failed:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def run_point(cfg: DictConfig) -> dict:
    """A launcher's job: one sweep point, in whatever process the launcher runs it.
    Returns what happened as a small dict (launchers send it back to the sweep)."""
    from benchmark.config import instantiate_method
    from benchmark.experiment import RunFailed, run_experiment
    from benchmark.records import RunBusy

    run = f"{instantiate_method(cfg.method).label} seed {cfg.seed}"
    failures: list[str] = []
    _join_job_tasks()
    distributed.setup(cfg.device)
    try:
        with claimed_gpu(cfg.device) as device, read_write(cfg):
            cfg.device = device
            run_experiment(cfg, log=print, failures=failures)
        status, error = "ok", None
    except RunFailed as err:
        status, error = "failed", str(err)
    except RunBusy as err:
        status, error = "busy", str(err)
    except UserError as err:
        status, error = "failed", f"error: {err}"
    finally:
        distributed.teardown()
    return {"status": status, "run": run, "error": error, "failures": failures}


def _join_job_tasks() -> None:
    """A submitit job of several tasks (`hydra.launcher.tasks_per_node`, one per GPU) is one
    run across them: the torch.distributed environment comes from submitit's."""
    if distributed.launched():
        return
    try:
        import submitit

        tasks = submitit.JobEnvironment().num_tasks
    except (ImportError, RuntimeError):  # not in a submitit job
        return
    if tasks > 1:
        # every task sees every GPU of its node and picks its LOCAL_RANK's
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


@contextlib.contextmanager
def claimed_gpu(device: str) -> Iterator[str]:
    """`device`; but a job with `device=auto` on a machine with several visible GPUs gets
    one that no other job on the machine holds (waiting while all are taken), so that a
    launcher running jobs side by side spreads them over the GPUs."""
    import torch

    if device != "auto" or distributed.launched() or torch.cuda.device_count() < 2:
        yield device
        return
    keys = [_gpu_key(i) for i in range(torch.cuda.device_count())]
    with claim_one(keys) as index:
        yield f"cuda:{index}"


def _gpu_key(index: int) -> str:
    """A name of the physical GPU (the same whatever CUDA_VISIBLE_DEVICES a job has)."""
    import torch

    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return f"gpu-{uuid}" if uuid else f"gpu-{index}"


@contextlib.contextmanager
def claim_one(keys: Sequence[str], folder: Path | None = None, poll_s: float = 5.0):
    """Hold an exclusive lock on one of `keys` (the first free one) for the block; yields
    its position. The lock is an `flock` on a file per key, which the system releases when
    the holder ends, however it ends."""
    folder = folder or Path(tempfile.gettempdir()) / f"mtpeft-claims-{os.getuid()}"
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for index, key in enumerate(keys):
            path = folder / f"{re.sub(r'[^A-Za-z0-9.-]+', '-', key)}.lock"
            handle = open(path, "a")  # noqa: SIM115 (held past this block, until the job ends)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield index
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(poll_s)
