"""The dense-prediction tasks of the protocol (protocol §1.1, 1.2, 1.4).

One place names every task: its label format, its loss weight in the paper recipe and the
primary metric that enters the multi-task score. Losses, meters, the Δm score and the report
all read it, so a task is added here once.

Label formats in a batch (N = batch, H x W = image size):

| task          | prediction          | label                                              |
|---------------|---------------------|----------------------------------------------------|
| `semseg`      | (N, C, H, W) logits | int64 (N, H, W) class ids, 255 ignored             |
| `human_parts` | (N, 7, H, W) logits | int64 (N, H, W) part ids, 255 ignored (no figure)  |
| `sal`         | (N, 1, H, W) logits | int64 (N, H, W) 0/1, 255 ignored                   |
| `normals`     | (N, 3, H, W)        | float (N, 3, H, W) unit vectors, zero = no label   |
| `depth`       | (N, 1, H, W)        | float (N, 1, H, W) metres, zero = no label         |
| `edge`        | (N, 1, H, W) logits | int64 (N, H, W) 0/1, 255 ignored                   |
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

IGNORE_INDEX = 255


@dataclass(frozen=True)
class TaskSpec:
    name: str
    loss_weight: float  # protocol §1.1 (depth: MTI-Net's NYUD recipe, weight 1)
    primary: str  # metric key of the Δm score (protocol §1.4)
    higher_is_better: bool

    @property
    def primary_key(self) -> str:
        return f"{self.name}.{self.primary}"


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("semseg", 1.0, "miou", True),
        TaskSpec("human_parts", 2.0, "miou", True),
        TaskSpec("sal", 5.0, "miou", True),
        TaskSpec("normals", 10.0, "mean", False),
        TaskSpec("depth", 1.0, "rmse", False),
        # the papers name no primary metric for the optional edge task; the pixel-level maxF
        # is the closest one this suite computes (see benchmark.metrics.EdgeMeter).
        TaskSpec("edge", 50.0, "maxf", True),
    )
}

# Output channels of the tasks whose width does not depend on the dataset.
FIXED_OUTPUTS = {"human_parts": 7, "sal": 1, "normals": 3, "depth": 1, "edge": 1}


def task_spec(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}") from None


def single_channel_label(pred: Tensor, target: Tensor, task: str) -> Tensor:
    """Check an (N, 1, H, W) prediction and bring its (N, H, W) label to the same shape."""
    if pred.dim() != 4 or pred.shape[1] != 1:
        raise ValueError(
            f"{task}: expected a prediction of shape (N, 1, H, W), got {tuple(pred.shape)}"
        )
    if target.dim() == 3:
        target = target.unsqueeze(1)
    if target.shape != pred.shape:
        raise ValueError(
            f"{task}: label shape {tuple(target.shape)} does not match prediction "
            f"{tuple(pred.shape)} (predictions must be at label resolution)"
        )
    return target


def check_normals(pred: Tensor, target: Tensor) -> None:
    """Check that a normals prediction and its label are both (N, 3, H, W)."""
    if pred.dim() != 4 or pred.shape[1] != 3 or target.shape != pred.shape:
        raise ValueError(
            "normals: expected prediction and label of the same shape (N, 3, H, W), got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
