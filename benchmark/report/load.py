"""Reading the records a report is made of: every valid record below a results directory,
and a warning for each one that is skipped (unreadable, malformed, or of an unknown version).
"""

from __future__ import annotations

from pathlib import Path

from benchmark.errors import UserError
from benchmark.records import Record, iter_records


def load(results_dir: Path) -> tuple[list[dict], list[str]]:
    """The valid records below `results_dir` (each with `_path`, relative to it) and one
    warning per record that was skipped."""
    if not results_dir.is_dir():
        raise UserError(
            f"no results directory at {results_dir}; run `python -m benchmark.run` first "
            "or pass results_dir=DIR"
        )
    records, warnings = [], []
    for path, record in iter_records(results_dir):
        unknown = None if record is None else Record.unknown_schema(record)
        if unknown is not None:
            warnings.append(f"skipped record {path}: {unknown}")
            continue
        problem = Record.problem(record)
        if problem is not None:
            warnings.append(f"skipped malformed record {path}: {problem}")
            continue
        records.append({**record, "_path": path.relative_to(results_dir).as_posix()})
    if not records:
        found = "no valid result records" if warnings else "no result records"
        raise UserError(f"{found} under {results_dir}; run `python -m benchmark.run` first")
    return records, warnings
