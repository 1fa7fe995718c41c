"""`python -m benchmark.data verify dataset=NAME dataset.root=DIR [dataset.tasks=[...]]`

Checks a copy of a real dataset before training on it: the layout, the image count of each
split, and every file the configured tasks need, each one decoded. Prints one line per
problem (the first 20, then a count) and where the data is published. Exit status 0 when
the copy is complete, 2 otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmark.errors import UserError, report_user_error

USAGE = "usage: python -m benchmark.data verify dataset=pascal_context|nyud dataset.root=DIR"


def verify(overrides: Sequence[str], progress: bool = True) -> int:
    from benchmark.config import compose_all
    from benchmark.data import REAL_DATASETS, make_layout
    from benchmark.data.prepared import MAX_PROBLEMS
    from benchmark.data.prepared import verify as verify_layout

    (cfg,) = compose_all([list(overrides)])
    if cfg.dataset.name not in REAL_DATASETS:
        raise UserError(
            f"verify checks {' or '.join(REAL_DATASETS)}; got dataset={cfg.dataset.name}"
        )
    layout = make_layout(cfg.dataset)
    report = verify_layout(layout, progress=progress and cfg.progress)
    counts = ", ".join(f"{split} {n} images" for split, n in report.counts.items())
    print(f"{layout.name} at {layout.root} ({', '.join(layout.tasks)}): {counts or 'no split'}")
    for line in report.problems[:MAX_PROBLEMS]:
        print(line)
    hidden = len(report.problems) - MAX_PROBLEMS
    if hidden > 0:
        print(f"... and {hidden} more problems")
    if report.problems:
        print(
            f"incomplete: {len(report.problems)} problems. The data is {layout.release}; "
            f"expected under the root: {layout.expected}"
        )
        return 2
    print("complete: every file is present and decodes")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command != "verify":
            raise UserError(f"unknown command {command!r}; {USAGE}")
        return verify(rest)
    except UserError as err:
        return report_user_error(err)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
