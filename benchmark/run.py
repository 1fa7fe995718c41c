"""`python -m benchmark.run [overrides]`: run the cartesian product of the overrides.

    python -m benchmark.run                                 # the default benchmark (sweep=default)
    python -m benchmark.run method=full_ft,decoders_only seed=0,1,2
    python -m benchmark.run method=full_ft budget=smoke budget.epochs=2
    python -m benchmark.run seeds=3                         # seed=0,1,2 (the default: seed=0)

Overrides are hydra's (config groups `method`, `dataset`, `backbone`, `budget`; keys such as
`seed`, `results_dir`, `budget.lr`); comma lists and `range(...)` sweep without `-m`. Without
a `method=` override the methods of `sweep=NAME` (conf/sweep/NAME.yaml) run. Every
configuration is composed and checked before the first run starts, the single-task
references run first, and a run that fails is recorded as failed while the sweep goes on.
Every key has a declared type and range (`benchmark.config`), checked for every point of
the sweep before anything trains. A run whose loss or final metrics are not finite is
recorded as failed. SIGINT and SIGTERM stop the sweep with one line; the run in progress
resumes from its last checkpoint (`checkpoint_every`: epochs, or training time such as
10min) when the same command runs again.
Exit status: 0 when every run finished, 1 when some failed, 2 on bad input, 130 / 143 when
interrupted / terminated.

    torchrun --nproc_per_node=4 -m benchmark.run method=mtlora  # each run on 4 GPUs (DDP)
    python -m benchmark.run method=mtlora,lora seed=0,1,2 hydra/launcher=slurm

Under torchrun every process runs the same sweep and rank 0 writes (`benchmark.distributed`);
an override of hydra's own configuration (`hydra/launcher=...`) hands the sweep to that
launcher, one job per run (`benchmark.launch`).
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
import time
from collections.abc import Sequence

from omegaconf import DictConfig
from tqdm.auto import tqdm

from benchmark import distributed
from benchmark.config import (  # noqa: F401 (CONF_DIR, sweep_methods: the old import path)
    CONF_DIR,
    GROUPS,
    choices,
    compose_all,
    expand,
    instantiate_method,
    sweep_methods,
)
from benchmark.errors import UserError, report_user_error


def run_sweep(configs: list[DictConfig]) -> int:
    from benchmark.experiment import (
        DataCache,
        RunFailed,
        fill_delta_m,
        reference_dir,
        run_experiment,
    )
    from benchmark.launch import print_summary
    from benchmark.records import REFERENCE_METHOD, RunBusy, finished_record, run_dir

    # References first: every other run of the same setting needs them for Δm.
    configs = sorted(configs, key=lambda c: c.method.name != REFERENCE_METHOD)
    cache = DataCache()
    failures, busy = [], []
    tried: set = set()  # references that failed in this sweep: not retried for every method
    main = distributed.is_main()
    progress = all(c.progress for c in configs) and main
    plain = progress and not sys.stderr.isatty()  # a log file: plain lines, no bars
    if plain:
        for cfg in configs:
            cfg.progress = False
    own = {run_dir(c, instantiate_method(c.method).label) for c in configs}
    # the references that the runs will train first count as runs of their own
    pending = {
        reference_dir(c) for c in configs if c.method.name != REFERENCE_METHOD
    } - own
    pending = {d for d in pending if finished_record(d) is None}
    total = len(configs) + len(pending)
    bar = tqdm(total=total, desc="sweep", unit="run", disable=not progress or plain or total == 1)
    start, done = time.monotonic(), 0
    for cfg in configs:
        bar.set_postfix_str(f"{cfg.method.name} seed {cfg.seed}")
        if plain and total > 1:
            print(f"sweep: run {done + 1} of {total}: {cfg.method.name} seed {cfg.seed}"
                  f"{_eta(start, done, total)}", file=sys.stderr, flush=True)
        try:
            run_experiment(cfg, cache, failures=failures, tried_references=tried)
        except RunFailed as err:  # recorded as failed; the sweep goes on
            failures.append(f"{cfg.method.name} seed {cfg.seed}: {err}")
            if main:
                tqdm.write(f"FAILED {cfg.method.name} seed {cfg.seed}: {err}")
        except RunBusy as err:
            busy.append(str(err))
            if main:
                tqdm.write(f"skip {cfg.method.name} seed {cfg.seed}: {err}")
        finished = {d for d in pending if (d / "result.json").exists() or d in tried}
        pending -= finished
        bar.update(1 + len(finished))
        done += 1 + len(finished)
    bar.close()
    if not main:
        return 1 if failures else 0
    filled = fill_delta_m(configs)
    if filled:
        print(f"filled in the Δm of {filled} runs whose reference finished meanwhile",
              file=sys.stderr)
    return print_summary(failures, busy, [str(c.results_dir) for c in configs])


def _eta(start: float, done: int, total: int) -> str:
    if not done:
        return ""
    left = (time.monotonic() - start) / done * (total - done)
    return f" (about {left / 60:.0f} min left)" if left >= 60 else f" (about {left:.0f} s left)"


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping the job, `kill`): handled as an interruption."""


_TERM = {"caught": True}


def _terminate(signum, frame) -> None:
    """Raise `Terminated` in the main thread. A signal that lands in code which swallows
    exceptions (an at-fork hook of a worker pool, a finaliser) is lost, so until `main` has
    caught it, a watchdog raises it again every few seconds."""
    if _TERM["caught"]:
        _TERM["caught"] = False
        threading.Thread(target=_raise_again, daemon=True).start()
    raise Terminated


def _raise_again(every_s: float = 5.0) -> None:
    while True:
        time.sleep(every_s)
        if _TERM["caught"]:
            return
        _thread.interrupt_main(signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        for group in (*GROUPS, "sweep"):
            print(f"  {group}: {', '.join(choices(group))}")
        return 0
    try:
        from benchmark.launch import is_hydra_override, launch_sweep

        hydra_overrides, overrides = [], []
        for arg in argv:
            (hydra_overrides if is_hydra_override(arg) else overrides).append(arg)
        combos = expand(overrides)
        configs = compose_all(combos, training=True)
        if hydra_overrides:
            return launch_sweep(configs, combos, hydra_overrides)
        distributed.setup(configs[0].device)
        previous = _on_sigterm(_terminate)
        try:
            return run_sweep(configs)
        finally:
            _on_sigterm(previous)
            distributed.teardown()
    except UserError as err:
        return report_user_error(err)
    except KeyboardInterrupt as err:
        _TERM["caught"] = True
        how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        print(f"{how}: finished runs are kept in their result.json; the same command "
              "resumes the rest", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130


def _on_sigterm(handler):
    """Install `handler` for SIGTERM (in the main thread only) and return the previous one."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
