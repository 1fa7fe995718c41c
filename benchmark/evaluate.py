"""`python -m benchmark.evaluate dataset=NAME dataset.root=DIR predictions=DIR` (protocol §5.1).

Scores saved predictions, of any model, against the validation split of a real dataset at
each image's original resolution, with the suite's meters (`benchmark.metrics`), and prints
the metrics as one JSON object shaped like a result record's `metrics`.

One file per task and validation image, `DIR/<task>/<id>.png`, at the image's size:

| task | file |
|---|---|
| `semseg`, `human_parts` | single-channel PNG of class ids |
| `sal`, `edge` | single-channel uint8 PNG, probability * 255 |
| `normals` | RGB uint8 PNG, (n + 1) / 2 * 255 per component |
| `depth` | `DIR/depth/<id>.npy`, float metres, (H, W) |

The tasks scored are `dataset.tasks`. A missing or unreadable prediction stops with an
error naming the file.

Saliency and edge probabilities enter the meters as logits, so the meters' definition
(`sigmoid(logit) > t`) applies unchanged: each code v becomes logit(v / 255), where 0 and
255 map to -inf and +inf. The codes whose v / 255 equals a threshold of the protocol
exactly (v = 51, 102, 153, 204: 0.2, 0.4, 0.6, 0.8) are moved 1e-3 lower in logit, so that
after the float32 sigmoid they still count as not above that threshold, as the exact
probability would; that moves them by at most 2.5e-4 in probability, well inside the
1/1020 that separates any other code from the nearest threshold.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark.errors import UserError, report_user_error

USAGE = (
    "usage: python -m benchmark.evaluate dataset=pascal_context|nyud dataset.root=DIR "
    "predictions=DIR"
)
THRESHOLD_CODES = (51, 102, 153, 204)  # v / 255 = 0.2, 0.4, 0.6, 0.8 exactly


def probability_logits() -> torch.Tensor:
    """(256,) float32: the logit that each uint8 probability code feeds the meters."""
    p = np.arange(256, dtype=np.float64) / 255.0
    with np.errstate(divide="ignore"):
        logits = np.log(p) - np.log1p(-p)
    logits[list(THRESHOLD_CODES)] -= 1e-3
    return torch.from_numpy(logits.astype(np.float32))


def read_prediction(task: str, path: Path, size: tuple[int, int], num_outputs: int):
    """The prediction file of one image as the meters take it (a batch of one)."""
    from benchmark.data.layout import DataError, read_npy, read_png_grey, read_png_rgb

    try:
        if task == "depth":
            values = read_npy(path).astype(np.float32)
            if values.ndim == 3 and values.shape[-1] == 1:
                values = values[..., 0]
        elif task == "normals":
            values = read_png_rgb(path)
        else:
            values = read_png_grey(path)
    except DataError as err:
        raise UserError(f"prediction {err}") from None
    if tuple(values.shape[:2]) != tuple(size) or values.ndim != (3 if task == "normals" else 2):
        raise UserError(
            f"prediction {path}: shape {values.shape} differs from the image's "
            f"{size[1]}x{size[0]}"
        )
    tensor = torch.from_numpy(np.array(values))  # a writable copy
    if task in ("semseg", "human_parts"):
        if int(tensor.max()) >= num_outputs:
            raise UserError(
                f"prediction {path}: class id {int(tensor.max())} outside 0..{num_outputs - 1}"
            )
        return tensor.long().unsqueeze(0)
    if task in ("sal", "edge"):
        return probability_logits()[tensor.long()].view(1, 1, *size)
    if task == "normals":
        return (tensor.float() * (2.0 / 255.0) - 1.0).permute(2, 0, 1).unsqueeze(0)
    return tensor.view(1, 1, *size)


def prediction_path(root: Path, task: str, image_id: str) -> Path:
    return root / task / f"{image_id}{'.npy' if task == 'depth' else '.png'}"


def evaluate_predictions(
    dataset_cfg, predictions: Path, progress: bool = True
) -> dict[str, dict[str, float]]:
    """Metrics of the predictions under `predictions` on the val split, at original size."""
    from benchmark.data import dataset_info, labels_at_original_size, load_real_split
    from benchmark.metrics import TaskMeters

    info = dataset_info(dataset_cfg)
    if not predictions.is_dir():
        raise UserError(f"predictions={predictions} is not a directory; expected {USAGE}")
    for task in info.tasks:
        if not (predictions / task).is_dir():
            raise UserError(
                f"no folder {predictions / task} of {task} predictions; restrict the tasks "
                "with dataset.tasks=[...] if you have not predicted every one"
            )
    split = load_real_split(dataset_cfg, "val", progress=progress)
    meters = TaskMeters({t: info.num_outputs[t] for t in info.tasks})
    device = torch.device("cpu")
    for index, image_id in enumerate(
        tqdm(split.ids, desc="scoring", unit="img", disable=not progress, leave=False)
    ):
        size = tuple(int(v) for v in split.sizes[index])
        labels = labels_at_original_size(split, index, info.tasks, device)
        outputs = {
            task: read_prediction(
                task, prediction_path(predictions, task, image_id), size, info.num_outputs[task]
            )
            for task in info.tasks
        }
        meters.update(outputs, labels)
    return meters.compute()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return 0
    from benchmark.config import compose_all, pop_options
    from benchmark.data import REAL_DATASETS

    options, overrides = pop_options(argv, {"predictions": None})
    try:
        if options["predictions"] is None:
            raise UserError(f"give predictions=DIR; {USAGE}")
        predictions = Path(options["predictions"]).expanduser()
        (cfg,) = compose_all([overrides])
        if cfg.dataset.name not in REAL_DATASETS:
            raise UserError(f"evaluate scores {' or '.join(REAL_DATASETS)}; {USAGE}")
        metrics = evaluate_predictions(cfg.dataset, predictions, progress=cfg.progress)
        bad = [f"{t}.{k}" for t, m in metrics.items() for k, v in m.items()
               if v is not None and not math.isfinite(v)]
        if bad:
            task = bad[0].split(".")[0]
            raise UserError(f"the metric {bad[0]} is not finite; check the {task} predictions")
    except UserError as err:
        return report_user_error(err)
    except KeyboardInterrupt:
        return 130
    print(json.dumps(metrics, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
