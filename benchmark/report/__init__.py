"""The report (protocol §5.3): result records in, markdown pages, CSV, LaTeX and figures out.

`python -m benchmark.report [results_dir=results] [output_dir=reports]` (`command`). The
modules, from the records up:

    load        the valid records below a results directory, a warning for each skipped
    groups      comparison groups and their rows (Δm recomputed against the reference)
    statistics  95 % t intervals over seeds and paired comparisons
    tables      the tables of a page as cells; summary: summary.csv; latex: their twins
    curves      learning curves averaged over seeds
    figures     which figures a group gets (one table), drawn by plots (and placement)
    commands    the commands a page prints (more seeds, a missing reference)
    pages       the markdown pages and the index
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmark.report` (see `benchmark.report.command`)."""
    from benchmark.report.command import main as run

    return run(argv)
