"""`python -m benchmark.report [results_dir=results] [output_dir=reports]` (protocol §5.3).

Reads result records only (never the training code) and writes, per comparison group
(dataset, tasks, backbone, budget):

    output_dir/index.md                  links every group
    output_dir/<group>.md                the group's page: relative-performance table, notes,
                                         figures, and for PASCAL-Context with Swin-T the
                                         published numbers beside ours
    output_dir/<group>/summary.csv       one row per configuration label
    output_dir/<group>/*.tex             the LaTeX (booktabs) twin of each table of the page
    output_dir/<group>/*.png, *.svg      Δm against trainable parameters, peak memory and
                                         training time (Pareto fronts), per-task change,
                                         learning curves

Seeds are aggregated as the mean with its 95 % Student t interval
(`benchmark.report.statistics`), and each configuration is compared, paired over the seeds,
with the best one and with full fine-tuning; one that cannot be told apart from the best is
marked as tied. With one seed the page says so and prints the command that runs three
(`benchmark.report.commands`, which reads the shipped config files to name only the
overrides that differ). Δm (protocol §1.4) is recomputed from the metrics against the
single-task reference of the same group, matched by seed, or the mean of the references when
that seed has none; the `delta_m` stored in a record is never used. Failed runs are listed
as failed rows with their error. A malformed record is named on stderr and skipped. The same
records give byte-identical markdown, CSV and SVG files.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

from benchmark.config import check_output_dir, parse_options
from benchmark.errors import UserError, report_user_error
from benchmark.records import REFERENCE_METHOD
from benchmark.report import plots
from benchmark.report.figures import FIGURES, write_figures
from benchmark.report.groups import build_groups
from benchmark.report.latex import TABLES, latex_tables
from benchmark.report.load import load
from benchmark.report.pages import group_page, index_page
from benchmark.report.summary import summary_csv


def write_reports(records: list[dict], output_dir: Path, figures: bool = True) -> list[Path]:
    """Write every group's page, CSV and figures and the index; return the pages."""
    groups = build_groups(records)
    styles = {}
    if figures:
        styles = plots.assign_styles(
            {(r["method"], r["label"]) for r in records if r["status"] == "ok"}, REFERENCE_METHOD
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    pages = []
    for group in groups:
        folder = output_dir / group.slug
        folder.mkdir(exist_ok=True)
        # stale files of an earlier report
        for name in [*(spec.stem for spec in FIGURES), *TABLES.values()]:
            for old in folder.glob(f"{name}.*"):
                old.unlink()
        drawn = write_figures(group, folder, styles) if figures else {}
        (folder / "summary.csv").write_text(summary_csv(group), encoding="utf-8")
        for key, text in latex_tables(group).items():
            (folder / f"{TABLES[key]}.tex").write_text(text, encoding="utf-8")
        page = output_dir / f"{group.slug}.md"
        page.write_text(group_page(group, drawn), encoding="utf-8")
        pages.append(page)
    (output_dir / "index.md").write_text(index_page(groups), encoding="utf-8")
    return pages


_DEFAULTS = {"results_dir": "results", "output_dir": "reports"}
_HINT = "use results_dir=DIR output_dir=DIR"


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    """The command's options; an unknown argument or an empty directory (`output_dir=`) is
    a `UserError` naming the first such argument."""
    for i, arg in enumerate(argv):
        key, sep, value = arg.partition("=")
        if sep and key in _DEFAULTS and not value:
            parse_options(argv[:i], _DEFAULTS, _HINT)  # an unknown argument before it first
            raise UserError(f"unknown argument {arg!r}; {_HINT}")
    return parse_options(argv, _DEFAULTS, _HINT)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        args = parse_args(argv)
        records, warnings = load(Path(args["results_dir"]))
        check_output_dir(args["output_dir"], "output_dir")
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"read {len(records)} record(s) from {args['results_dir']}")
        matplotlib.use("Agg")
        pages = write_reports(records, Path(args["output_dir"]))
    except UserError as err:
        return report_user_error(err)
    print(f"wrote {len(pages)} group page(s), figures and CSVs; "
          f"index at {Path(args['output_dir']) / 'index.md'}")
    return 0
