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
import itertools
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm.auto import tqdm

from benchmark import distributed
from benchmark.config import check_config, check_output_dir
from benchmark.errors import UserError, report_user_error

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("method", "dataset", "backbone", "budget")


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def sweep_methods(name: str) -> list[str]:
    path = CONF_DIR / "sweep" / f"{name}.yaml"
    if not path.exists():
        raise UserError(f"unknown sweep {name!r}; choose from {', '.join(choices('sweep'))}")
    return list(OmegaConf.load(path).methods)


def pop_options(
    argv: Sequence[str], defaults: dict[str, str | None]
) -> tuple[dict[str, str | None], list[str]]:
    """The `key=value` options of a command (the keys of `defaults`, the last one given
    winning) and the rest of `argv`, the overrides, in order. `-h` or `--help` anywhere
    prints the calling command's docstring and exits 0."""
    if any(arg in ("-h", "--help") for arg in argv):
        print(sys._getframe(1).f_globals.get("__doc__") or "")
        raise SystemExit(0)
    options = dict(defaults)
    rest = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in options:
            options[key] = value
        else:
            rest.append(arg)
    return options, rest


def expand(
    overrides: Sequence[str], default_sweep: str = "default", listing: bool = False
) -> list[list[str]]:
    """The cartesian product of the overrides, as one override list per configuration.

    Without a `method=` override the methods of the sweep preset (`sweep=NAME`, else
    `default_sweep`) are the first axis, in the preset's order; with `listing` (the tables
    of `benchmark.params` and `benchmark.perf`) they are the last axis, in name order."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise UserError(f"cannot parse the overrides: {_first_line(err)}") from None
    axes: dict[str, list[str]] = {}
    sweep = default_sweep
    for o in parsed:
        key = o.get_key_element()
        if key == "sweep":
            sweep = o.get_value_element_as_str()
            continue
        if key == "seeds":  # seeds=N: seed=0,...,N-1
            value = o.get_value_element_as_str()
            if o.is_sweep_override() or not value.isdigit() or int(value) < 1:
                raise UserError(f"seeds must be a whole number >= 1 (seeds=3: seed=0,1,2), "
                                f"got {value!r}")
            if "seed" in axes:
                raise UserError("give seed=... or seeds=N, not both")
            axes["seed"] = [f"seed={i}" for i in range(int(value))]
            continue
        if key == "seed" and "seed" in axes:
            raise UserError("give seed=... or seeds=N, not both")
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                raise UserError(f"{key}: only lists, choice() and range() sweep here")
            values = list(o.sweep_string_iterator())
        else:
            values = [o.get_value_element_as_str()]
        if o.key_or_group in GROUPS and o.package is None:
            for value in values:
                if value not in choices(o.key_or_group):
                    raise UserError(
                        f"unknown {o.key_or_group} {value!r}; choose from "
                        f"{', '.join(choices(o.key_or_group))}"
                    )
        axes[key] = [f"{key}={v}" for v in values]
    if "method" not in axes:
        methods = [f"method={m}" for m in sweep_methods(sweep)]
        axes = {**axes, "method": sorted(methods)} if listing else {"method": methods, **axes}
    return [list(combo) for combo in itertools.product(*axes.values())]


def compose_all(combos: list[list[str]], training: bool = False) -> list[DictConfig]:
    """Compose and `validate` every configuration; `training` adds the checks that only a
    run needs (the dataset's files, the backbone's weights), which counting does not."""
    GlobalHydra.instance().clear()
    with initialize_config_module("benchmark.conf", version_base="1.3"):
        configs = []
        for combo in combos:
            try:
                configs.append(compose(config_name="config", overrides=combo))
            except (HydraException, OmegaConfBaseException) as err:
                raise UserError(_explain(err, combo)) from None
    checked: set[str] = set()
    for cfg in configs:
        validate(cfg, training)
        if training and cfg.results_dir not in checked:
            check_output_dir(cfg.results_dir, "results_dir")
            checked.add(cfg.results_dir)
    return configs


def validate(cfg: DictConfig, training: bool = False) -> None:
    from benchmark.data import check_dataset, dataset_info

    if OmegaConf.is_missing(cfg.method, "_target_"):
        raise UserError(
            f"method={cfg.method.name} needs method._target_=package.module.Class "
            "(a methods.base.Method subclass importable from here)"
        )
    check_config(cfg)  # every key's type and range
    from methods.base import instantiate_method

    method = instantiate_method(cfg.method)  # unknown options and classes fail here
    check_widths = getattr(method, "check_widths", None)  # options that depend on the widths
    if check_widths is not None:
        try:
            check_widths([cfg.backbone.embed_dim * 2**s for s in range(len(cfg.backbone.depths))])
        except ValueError as err:
            raise UserError(f"method {cfg.method.name}: {err}") from None
    from benchmark.precision import check_budget

    check_budget(cfg.budget)  # `precision` against the deprecated `amp`
    dataset_info(cfg.dataset)
    if training:
        from benchmark.backbone import require_weights, resolve_weights

        check_dataset(cfg.dataset)  # the root and its split lists exist
        require_weights(cfg.backbone, cfg.dataset.name)
        resolve_weights(cfg.backbone)  # the checkpoint file exists


def _explain(err: BaseException, combo: list[str]) -> str:
    """Hydra's composition error as one line; an unknown key lists the valid ones."""
    text = str(err)
    if text.startswith("Could not override '"):
        key = text.split("'")[1]
        group, _, _ = key.rpartition(".")
        selections = [o for o in combo if o.split("=", 1)[0] in GROUPS]
        base = compose(config_name="config", overrides=selections)
        node = OmegaConf.select(base, group) if group else base
        valid = ", ".join(k for k in node if not str(k).startswith("_")) if node else ""
        where = f"{group}" if group else "the config"
        return f"unknown key {key!r}; the keys of {where} are: {valid}"
    return _first_line(err)


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split("\n")[0:1]).strip()
    # hydra lists the options of a missing config on the following lines
    options = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
    if options and "Available options" in str(err):
        return f"{text}; {' '.join(options)}"
    return text


def run_sweep(configs: list[DictConfig]) -> int:
    from benchmark.experiment import (
        REFERENCE_METHOD,
        DataCache,
        RunFailed,
        fill_delta_m,
        reference_dir,
        run_experiment,
    )
    from benchmark.records import RunBusy, finished_record, run_dir
    from methods.base import instantiate_method

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
    if busy:
        print(f"{len(busy)} runs were left to the processes training them", file=sys.stderr)
    places = sorted({str(c.results_dir) for c in configs})
    for place in places:
        print(f"records are in {place}/; the report: python -m benchmark.report "
              f"results_dir={place}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} runs failed:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


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
