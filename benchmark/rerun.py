"""The command that re-runs a comparison group's configurations with other seeds.

Built from the records' resolved configurations: each config group (`method`, `dataset`,
`backbone`, `budget`) is named by its file and every value that differs from that file is
given as an override, so the printed command composes the same configurations (the same
run keys) with the new seeds, and the finished seeds are skipped when it runs.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("dataset", "backbone", "budget")
DEFAULT_RESULTS = "results"


def _value(value) -> str:
    """A value in hydra's override syntax."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        special = set(" ,[]{}()=:'\"\\$*?")
        return f"'{value}'" if not value or special & set(value) else value
    return repr(value)


def _shipped(group: str, name: str) -> tuple[str, dict] | None:
    """(choice, resolved values) of the config file a group's values start from."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.exists() and group == "method":
        path = CONF_DIR / group / "custom.yaml"
    if not path.exists():
        return None
    return path.stem, OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def group_overrides(group: str, values: dict) -> list[str]:
    """`group=choice` and one `group.key=value` per value that differs from the file."""
    name = str(values.get("name"))
    shipped = _shipped(group, name)
    if shipped is None:
        return [f"{group}={name}"]
    choice, defaults = shipped
    out = [f"{group}={choice}"]
    for key, value in values.items():
        if key not in defaults or defaults[key] != value:
            out.append(f"{group}.{key}={_value(value)}")
    return out


def _record_overrides(record: dict) -> tuple[list[str], list[str]]:
    """(the method's overrides, everything else's) that compose `record`'s configuration."""
    config = record.get("config")
    full = isinstance(config, dict) and all(isinstance(config.get(g), dict)
                                            for g in ("method", *GROUPS))
    if not full:
        return [f"method={record['method']}"], [
            f"dataset={record['dataset']}", f"dataset.tasks={_value(record['tasks'])}",
            f"backbone={record['backbone']}", f"budget={record['budget']}",
        ]
    rest = [o for g in GROUPS for o in group_overrides(g, config[g])]
    results = config.get("results_dir")
    if results and results != DEFAULT_RESULTS:
        rest.append(f"results_dir={_value(str(results))}")
    return group_overrides("method", config["method"]), rest


def seeds_commands(records: Iterable[dict], seeds: Sequence[int] = (0, 1, 2)) -> list[str]:
    """The shortest list of `python -m benchmark.run` commands that run every configuration
    of `records` with `seeds`: the methods at their file's options share one command (a
    comma list), a method with changed options gets its own."""
    plain: dict[tuple[str, ...], list[str]] = {}
    options: dict[tuple[str, ...], list[list[str]]] = {}
    for record in records:
        method, rest = _record_overrides(record)
        key = tuple(rest)
        if len(method) == 1:
            choice = method[0].split("=", 1)[1]
            if choice not in plain.setdefault(key, []):
                plain[key].append(choice)
        elif method not in options.setdefault(key, []):
            options[key].append(method)
    seed = f"seed={','.join(map(str, seeds))}"
    commands = []
    for key in sorted(set(plain) | set(options)):
        parts = []
        if plain.get(key):
            parts.append([f"method={','.join(plain[key])}"])
        parts += options.get(key, [])
        for method in parts:
            tokens = ["python", "-m", "benchmark.run", *method, *key, seed]
            commands.append(" ".join(shlex.quote(t) for t in tokens))
    return commands
