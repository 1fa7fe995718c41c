"""The shape of the code: layers import downwards only, no import circle, small files.

Every import statement counts, at module level or inside a function (a deferred import that
climbs a layer is still a dependency on it). The layers, lowest first:

1. foundations: errors, atomic, tasks, precision, cost, and the declarations of the
   configuration (`benchmark.config.schema`, `.parts`, `.execution`: the typed keys and parts
   every layer receives, importing nothing above this layer)
2. the harness parts: data, metrics, losses, backbone, distributed, speed, checkpoint
3. the method protocol (`benchmark.method`) and the building blocks (`methods.blocks`)
4. the methods (`methods.*`)
5. the model, the configuration layer, training, records
6. the experiment, the launchers, the report
7. the commands (`python -m ...`), which nothing imports
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGES = ("benchmark", "methods")
COMMANDS = {
    "benchmark.run", "benchmark.params", "benchmark.perf", "benchmark.pretrain",
    "benchmark.evaluate", "benchmark.gpucheck", "benchmark.data.__main__",
    "benchmark.report.command", "benchmark.report.__main__",
}
MAX_LINES = 500
MAX_METHOD_CODE_LINES = 150


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules that `name` imports (`from pkg import mod` resolves to pkg.mod
    where that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def layer(name: str) -> int:
    top = name.split(".")
    if name in COMMANDS:
        return 7
    if top[0] == "methods":
        return 3 if len(top) > 1 and top[1] in ("blocks", "base") or len(top) == 1 else 4
    sub = top[1] if len(top) > 1 else ""
    if name in ("benchmark.config.schema", "benchmark.config.parts", "benchmark.config.execution"):
        return 1
    if sub in ("errors", "atomic", "tasks", "precision", "cost", "conf") or not sub:
        return 1
    if sub in ("data", "metrics", "losses", "backbone", "distributed", "speed", "checkpoint"):
        return 2
    if sub == "method":
        return 3
    if sub in ("model", "config", "train", "records", "perf_report"):
        return 5
    if sub in ("experiment", "launch", "report"):
        return 6
    raise AssertionError(f"{name}: no layer declared for it in tests/test_structure.py")


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


def test_no_module_imports_a_higher_layer():
    upward = sorted(
        f"{name} (layer {layer(name)}) imports {dep} (layer {layer(dep)})"
        for name, deps in GRAPH.items() for dep in deps
        if layer(dep) > layer(name) and not dep.startswith(name + ".")
        and not (name.rpartition(".")[0] == dep.rpartition(".")[0] and name in COMMANDS)
    )
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    """Depth-first search over the import graph; a package's `__init__` re-exporting its
    own modules is not a circle."""
    state: dict[str, int] = {}
    circles = []

    def visit(node, path):
        state[node] = 1
        for dep in sorted(GRAPH[node]):
            if dep.startswith(node + "."):
                continue  # a package importing its own submodules
            if state.get(dep) == 1:
                circles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not circles, "\n".join(circles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_file_is_short(name):
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines"


def _code_lines(path: Path) -> int:
    """Lines of a module without its docstrings (module, class and function) and blanks."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    doc = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                doc.update(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(1 for i, line in enumerate(text.splitlines(), 1)
               if i not in doc and line.strip() and not line.strip().startswith("#"))


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) == 4))
def test_method_file_is_short(name):
    assert _code_lines(MODULES[name]) < MAX_METHOD_CODE_LINES


def test_code_lines_leave_docstrings_out(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('"""Doc\nstring."""\n\n\ndef f():\n    """One."""\n    return 1  # x\n'
                    "# a comment\n")
    assert _code_lines(path) == 2
