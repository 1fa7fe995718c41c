"""Composing configurations from a command line: hydra's composition of `conf/`, the sweep's
cartesian product (`expand`), and the `key=value` options of a command (`pop_options`,
`parse_options`).

Every command that takes overrides composes through `compose_all`, which checks each
configuration (`benchmark.config.checks.validate`) before the command does anything else.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from benchmark.config.checks import check_output_dir, validate
from benchmark.errors import UserError, first_line

CONF_DIR = Path(__file__).parent.parent / "conf"
GROUPS = ("method", "dataset", "backbone", "budget")


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def sweep_methods(name: str) -> list[str]:
    path = CONF_DIR / "sweep" / f"{name}.yaml"
    if not path.exists():
        raise UserError(f"unknown sweep {name!r}; choose from {', '.join(choices('sweep'))}")
    return list(OmegaConf.load(path).methods)


def pop_options(
    argv: Sequence[str], defaults: dict[str, str | None], doc: str | None = None
) -> tuple[dict[str, str | None], list[str]]:
    """The `key=value` options of a command (the keys of `defaults`, the last one given
    winning) and the rest of `argv`, the overrides, in order. With `doc` (the command's
    docstring), `-h` or `--help` anywhere prints it and exits 0."""
    if doc is not None and any(arg in ("-h", "--help") for arg in argv):
        print(doc)
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


def parse_options(
    argv: Sequence[str], defaults: dict[str, str | None], hint: str, doc: str | None = None
) -> dict[str, str | None]:
    """The `key=value` options of a command that takes nothing else: as `pop_options`, and
    anything that is not one of its keys is a `UserError` naming it, followed by `hint`
    (how to call the command)."""
    options, rest = pop_options(argv, defaults, doc)
    if rest:
        raise UserError(f"unknown argument {rest[0]!r}; {hint}")
    return options


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
        raise UserError(f"cannot parse the overrides: {first_line(err)}") from None
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
    run needs (the dataset's files, the backbone's weights, a writable `results_dir`),
    which counting does not."""
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
    return first_line(err)
