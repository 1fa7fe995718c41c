"""`python -m benchmark.data verify dataset=NAME dataset.root=DIR [dataset.tasks=[...]]`
`python -m benchmark.data ceiling [stride=8] [dataset overrides]`

`verify` checks a copy of a real dataset before training on it: the layout, the image count
of each split, and every file the configured tasks need, each one decoded. Prints one line
per problem (the first 20, then a count) and where the data is published. Exit status 0 when
the copy is complete, 2 otherwise.

`ceiling` prints, for each segmentation task of the synthetic benchmark among
`dataset.tasks` (`semseg`, `human_parts`, and `sal` as two classes at one threshold), the
mIoU and per-class IoU of the best prediction a decoder whose logits live on a
stride-`stride` grid can make on the validation split (`benchmark.metrics.ceiling`; the
harness's decoders predict at stride 8).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmark.errors import UserError, report_user_error

USAGE = (
    "usage: python -m benchmark.data verify dataset=pascal_context|nyud dataset.root=DIR, "
    "or python -m benchmark.data ceiling [stride=8]"
)
CEILING_TASKS = {"semseg": None, "human_parts": 7, "sal": 2}  # None: the dataset's classes


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


def ceiling(overrides: Sequence[str]) -> int:
    import torch

    from benchmark.config import compose_all
    from benchmark.config.compose import pop_options
    from benchmark.data import dataset_info, synthetic
    from benchmark.data.cache import cache_root
    from benchmark.data.registry import SYNTHETIC
    from benchmark.metrics.ceiling import grid_ceiling

    options, rest = pop_options(list(overrides), {"stride": "8"})
    try:
        stride = int(options["stride"])
    except ValueError:
        raise UserError(f"stride must be a whole number, got {options['stride']!r}") from None
    (cfg,) = compose_all([rest])
    if cfg.dataset.name != SYNTHETIC:
        raise UserError(f"ceiling reads the synthetic benchmark; got dataset={cfg.dataset.name}")
    size = int(cfg.dataset.image_size)
    if stride < 1 or size % stride:
        raise UserError(f"stride must be a positive divisor of dataset.image_size={size}")
    info = dataset_info(cfg.dataset)
    val = synthetic.load_split(int(cfg.dataset.seed), "val", int(cfg.dataset.val_size), size,
                               root=cache_root(cfg.dataset), progress=bool(cfg.progress))
    print(f"stride-{stride} ceiling on {len(val['image'])} validation images at {size} px "
          f"(render version {synthetic.RENDER_VERSION}):")
    for task, classes in CEILING_TASKS.items():
        if task not in info.tasks:  # dataset.tasks given without it
            continue
        labels = torch.from_numpy(val[task].astype("int64"))
        meter = grid_ceiling(labels, classes or info.num_outputs[task], stride)
        per_class = " ".join(f"{iou:.1f}" for iou in meter.per_class_iou())
        print(f"{task:12s} mIoU {meter.compute()['miou']:5.1f}  per class {per_class}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "ceiling":
            return ceiling(rest)
        if command != "verify":
            raise UserError(f"unknown command {command!r}; {USAGE}")
        return verify(rest)
    except UserError as err:
        return report_user_error(err)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
