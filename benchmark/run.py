"""`python -m benchmark.run [overrides]`: run the cartesian product of the overrides.

    python -m benchmark.run                                 # the default benchmark (sweep=default)
    python -m benchmark.run method=full_ft,decoders_only seed=0,1,2
    python -m benchmark.run method=full_ft budget=smoke budget.epochs=2

Overrides are hydra's (config groups `method`, `dataset`, `backbone`, `budget`; keys such as
`seed`, `results_dir`, `budget.lr`); comma lists and `range(...)` sweep without `-m`. Without
a `method=` override the methods of `sweep=NAME` (conf/sweep/NAME.yaml) run. Every
configuration is composed and checked before the first run starts, the single-task
references run first, and a run that fails is recorded as failed while the sweep goes on.
Exit status: 0 when every run finished, 1 when some failed, 2 on bad input.

    torchrun --nproc_per_node=4 -m benchmark.run method=mtlora  # each run on 4 GPUs (DDP)
    python -m benchmark.run method=mtlora,lora seed=0,1,2 hydra/launcher=slurm

Under torchrun every process runs the same sweep and rank 0 writes (`benchmark.distributed`);
an override of hydra's own configuration (`hydra/launcher=...`) hands the sweep to that
launcher, one job per run (`benchmark.launch`).
"""

from __future__ import annotations

import itertools
import sys
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
    winning) and the rest of `argv`, the overrides, in order."""
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
    for cfg in configs:
        validate(cfg, training)
    return configs


def validate(cfg: DictConfig, training: bool = False) -> None:
    from benchmark.data import check_dataset, dataset_info

    if OmegaConf.is_missing(cfg.method, "_target_"):
        raise UserError(
            f"method={cfg.method.name} needs method._target_=package.module.Class "
            "(a methods.base.Method subclass importable from here)"
        )
    from methods.base import instantiate_method

    method = instantiate_method(cfg.method)  # unknown options and classes fail here
    check_widths = getattr(method, "check_widths", None)  # options that depend on the widths
    if check_widths is not None:
        try:
            check_widths([cfg.backbone.embed_dim * 2**s for s in range(len(cfg.backbone.depths))])
        except ValueError as err:
            raise UserError(f"method {cfg.method.name}: {err}") from None
    budget = cfg.budget
    for key in ("epochs", "batch_size"):
        if not isinstance(budget[key], int) or budget[key] < 1:
            raise UserError(f"budget.{key} must be a whole number >= 1, got {budget[key]}")
    if not budget.lr > 0:
        raise UserError(f"budget.lr must be positive, got {budget.lr}")
    if not isinstance(cfg.seed, int):
        raise UserError(f"seed must be a whole number, got {cfg.seed!r}")
    from benchmark.precision import check_budget

    check_budget(budget)
    for key in ("compile", "channels_last", "fused_attn"):
        if not isinstance(cfg[key], bool):
            raise UserError(f"{key} must be true or false, got {cfg[key]!r}")
    if not isinstance(cfg.data_on_gpu, int | float) or not 0 <= cfg.data_on_gpu <= 1:
        raise UserError(f"data_on_gpu must be a share between 0 and 1, got {cfg.data_on_gpu!r}")
    if not isinstance(cfg.prefetch, int) or cfg.prefetch < 0:
        raise UserError(f"prefetch must be a whole number >= 0, got {cfg.prefetch!r}")
    eval_every = cfg.get("eval_every", 0)
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0:
        raise UserError(f"eval_every must be a whole number >= 0 (epochs), got {eval_every!r}")
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
    from benchmark.experiment import REFERENCE_METHOD, DataCache, RunFailed, run_experiment
    from benchmark.records import RunBusy

    # References first: every other run of the same setting needs them for Δm.
    configs = sorted(configs, key=lambda c: c.method.name != REFERENCE_METHOD)
    cache = DataCache()
    failures, busy = [], []
    main = distributed.is_main()
    progress = all(c.progress for c in configs) and main
    bar = tqdm(configs, desc="sweep", unit="run", disable=not progress or len(configs) == 1)
    for cfg in bar:
        bar.set_postfix_str(f"{cfg.method.name} seed {cfg.seed}")
        try:
            run_experiment(cfg, cache, failures=failures)
        except RunFailed as err:  # recorded as failed; the sweep goes on
            failures.append(f"{cfg.method.name} seed {cfg.seed}: {err}")
            if main:
                tqdm.write(f"FAILED {cfg.method.name} seed {cfg.seed}: {err}")
        except RunBusy as err:
            busy.append(str(err))
            if main:
                tqdm.write(f"skip {cfg.method.name} seed {cfg.seed}: {err}")
    bar.close()
    if not main:
        return 1 if failures else 0
    if busy:
        print(f"{len(busy)} runs were left to the processes training them", file=sys.stderr)
    if failures:
        print(f"{len(failures)} runs failed:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


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
        try:
            return run_sweep(configs)
        finally:
            distributed.teardown()
    except UserError as err:
        return report_user_error(err)
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept in their result.json", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
