"""The commands a report prints: the one that re-runs a group's configurations with other
seeds, and the one that trains a group's missing single-task reference.

Both are built from the records' resolved configurations: each config group (`method`,
`dataset`, `backbone`, `budget`) is named by its file and every value that differs from that
file is given as an override, so the printed command composes the same configurations (the
same run keys); the finished seeds are skipped when it runs.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path

from omegaconf import OmegaConf

from benchmark.records import REFERENCE_METHOD

CONF_DIR = Path(__file__).parents[1] / "conf"
GROUPS = ("dataset", "backbone", "budget")
DEFAULT_RESULTS = "results"


def override_value(value) -> str:
    """`value` as hydra's override grammar reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if isinstance(value, str) and not re.fullmatch(r"[\w./:+-]+", text):
        # quoted: a quote is escaped, and so are the backslashes before a quote or the end
        # (hydra keeps every other backslash as it is)
        return "'" + re.sub(r"(\\*)('|$)", _escape_quoted, text) + "'"
    return text


def _escape_quoted(match: re.Match) -> str:
    backslashes, quote = match.groups()
    return 2 * backslashes + ("\\'" if quote else "")


def _shipped(group: str, name: str) -> tuple[str, dict] | None:
    """(choice, resolved values) of the config file a group's values start from."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.exists() and group == "method":
        path = CONF_DIR / group / "custom.yaml"
    if not path.exists():
        return None
    return path.stem, OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def changed(group: str, choice: str, values: dict, known_only: bool = False) -> list[str]:
    """One `group.key=value` per value that differs from the file of `choice` (every value
    when there is no such file); with `known_only`, only of the keys the file has, and
    neither `name` nor `tasks` (the caller names them)."""
    shipped = _shipped(group, choice)
    defaults = {} if shipped is None else shipped[1]
    out = []
    for key, value in values.items():
        if known_only:
            differs = key not in ("name", "tasks") and key in defaults and defaults[key] != value
        else:
            differs = key not in defaults or defaults[key] != value
        if differs:
            out.append(f"{group}.{key}={override_value(value)}")
    return out


def group_overrides(group: str, values: dict) -> list[str]:
    """`group=choice` and one `group.key=value` per value that differs from the file."""
    name = str(values.get("name"))
    shipped = _shipped(group, name)
    if shipped is None:
        return [f"{group}={name}"]
    return [f"{group}={shipped[0]}", *changed(group, shipped[0], values)]


def results_override(config: dict) -> list[str]:
    """`results_dir=...` when the runs wrote somewhere else than the default."""
    results = config.get("results_dir")
    if results and results != DEFAULT_RESULTS:
        return [f"results_dir={override_value(str(results))}"]
    return []


def _record_overrides(record: dict) -> tuple[list[str], list[str]]:
    """(the method's overrides, everything else's) that compose `record`'s configuration."""
    config = record.get("config")
    full = isinstance(config, dict) and all(isinstance(config.get(g), dict)
                                            for g in ("method", *GROUPS))
    if not full:
        return [f"method={record['method']}"], [
            f"dataset={record['dataset']}", f"dataset.tasks={override_value(record['tasks'])}",
            f"backbone={record['backbone']}", f"budget={record['budget']}",
        ]
    rest = [o for g in GROUPS for o in group_overrides(g, config[g])]
    return group_overrides("method", config["method"]), rest + results_override(config)


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


def reference_command(group) -> str:
    """The command that trains `group`'s missing single-task references, as it runs: the
    group's dataset, backbone and budget with every setting its runs changed from the
    shipped configuration (a swept `budget.lr`, smaller splits) as overrides."""
    seeds = sorted({s for row in group.rows for s in row.seeds})
    run = group.rows[0].runs[0] if group.rows and group.rows[0].runs else {}
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    budget = run.get("budget", group.budget)
    words = [f"method={REFERENCE_METHOD}", f"dataset={group.dataset}",
             f"dataset.tasks=[{','.join(group.tasks)}]", f"backbone={group.backbone}",
             f"budget={budget}"]
    for part, choice in (("dataset", group.dataset), ("backbone", group.backbone),
                         ("budget", budget)):
        values = config.get(part)
        if isinstance(values, dict) and (CONF_DIR / part / f"{choice}.yaml").exists():
            words += changed(part, choice, values, known_only=True)
    words += results_override(config)
    words.append(f"seed={','.join(map(str, seeds))}")
    return "python -m benchmark.run " + " ".join(words)
