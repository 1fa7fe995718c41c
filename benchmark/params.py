"""`python -m benchmark.params [overrides] [format=json]`: trainable parameters per method.

Builds every method's model on the meta device (no data, no weights, no memory) and prints
its trainable and total parameters beside the count its paper reports for Swin-T on
PASCAL-Context, e.g.

    python -m benchmark.params dataset=pascal_context backbone=swin_tiny

Takes the overrides of `benchmark.run`; without `method=` it lists every method.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import torch
from tabulate import tabulate

from benchmark.config import compose_all, expand, instantiate_method, pop_options
from benchmark.config.parts import parse
from benchmark.errors import UserError, report_user_error


def count(cfg) -> dict:
    from benchmark.data import dataset_info
    from benchmark.model import build_model, count_parameters

    spec = parse(cfg)
    method = instantiate_method(spec.method.node)
    info = dataset_info(spec.data)
    trainable = total = decoders = 0
    with torch.device("meta"):
        for tasks in method.task_groups(info.tasks):
            model = build_model(method, spec.backbone, info, tasks,
                                drop_path=spec.budget.drop_path, load_weights=False)
            trainable += count_parameters(model, trainable_only=True)
            total += count_parameters(model)
            decoders += count_parameters(model.decoders)
            mode = model.encoder.mode  # the method's, whatever tasks the model has
    return {
        "method": method.name,
        "label": method.label,
        "trainable": trainable,
        "total": total,
        "decoders": decoders,
        "paper_trainable_m": method.paper_trainable_m,
        "encoder_mode": mode,
        "dataset": info.name,
        "backbone": spec.backbone.name,
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options, rest = pop_options(argv, {"format": "table"}, __doc__)
    fmt = options["format"]
    try:
        if fmt not in ("table", "json"):
            raise UserError(f"unknown format {fmt!r}; choose from table, json")
        rows = [count(cfg) for cfg in compose_all(expand(rest, default_sweep="full", listing=True))]
    except UserError as err:
        return report_user_error(err)
    if fmt == "json":
        for row in rows:
            print(json.dumps(row))
        return 0
    table = [
        [
            r["label"],
            f"{r['trainable']:,}",
            f"{r['trainable'] / 1e6:.2f}",
            "" if r["paper_trainable_m"] is None else f"{r['paper_trainable_m']:.2f}",
            f"{r['total']:,}",
            r["encoder_mode"],
        ]
        for r in rows
    ]
    first = rows[0]
    print(f"dataset {first['dataset']}, backbone {first['backbone']}")
    headers = ["method", "trainable", "M", "paper M (Swin-T, PASCAL)", "total", "encoder"]
    print(tabulate(table, headers=headers, colalign=("left", "right", "right", "right", "right")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
