"""MTLoRA and MTLoRA+ pinned to a golden output (a regression test).

A swin_micro model at 64 px with MTLoRA's default options (and MTLoRA+'s), every parameter
set from a seeded generator in name order (so that the golden values do not depend on how
any module initialises itself), run in float64 in eval mode on one seeded image: the
per-task decoder outputs (8 x 8 average-pooled, plus the full value at a few pixels), the
task losses and their weighted total on seeded labels, the gradient norm of every trainable
tensor, and the trainable set itself (names and count) are compared with
`tests/data/mtlora_golden.json`, which our code produced when the model had been checked
against the official implementation (identical outputs, losses and trainable sets).

A change that alters any of them fails here. If the change is intended, regenerate the
file with `MTPEFT_WRITE_GOLDEN=1 python -m pytest tests/test_mtlora_golden.py` and say why
in the commit.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmark.config import instantiate_method
from benchmark.data import dataset_info
from benchmark.losses import MultiTaskLoss
from benchmark.model import build_model, count_parameters
from benchmark.run import compose_all

GOLDEN = Path(__file__).parent / "data" / "mtlora_golden.json"
SIZE = 64
PIXELS = [(0, 0), (13, 50), (31, 32), (63, 63)]  # (y, x) where the full output is kept
UNUSED = "encoder.backbone.stages.3.blocks.1.block.mlp.fc2.shared."
RTOL = 1e-9  # float64: only the order of summation (threads, BLAS) may differ


def seeded_model(method: str) -> tuple[torch.nn.Module, list[str], dict[str, int]]:
    (cfg,) = compose_all([[f"method={method}", "backbone=swin_micro", "backbone.weights=none",
                           f"dataset.image_size={SIZE}"]])
    info = dataset_info(cfg.dataset)
    torch.manual_seed(0)
    model = build_model(instantiate_method(cfg.method), cfg.backbone, info, info.tasks,
                        drop_path=cfg.budget.drop_path, load_weights=False).double().eval()
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            z = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if p.ndim == 1 and name.endswith("weight"):  # norms: around 1
                p.copy_(1.0 + 0.1 * z)
            elif p.ndim >= 2 and "relative_position_bias_table" not in name:
                p.copy_(z / math.sqrt(p[0].numel()))
            else:  # biases, tables
                p.copy_(0.1 * z)
    return model, info.tasks, info.num_outputs


def seeded_batch(tasks: list[str], num_outputs: dict[str, int]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    batch = {"image": torch.randn(2, 3, SIZE, SIZE, generator=g, dtype=torch.float64)}
    for task in tasks:
        if task == "normals":
            batch[task] = F.normalize(torch.randn(2, 3, SIZE, SIZE, generator=g,
                                                  dtype=torch.float64), dim=1)
        else:
            classes = 2 if task == "sal" else num_outputs[task]
            batch[task] = torch.randint(0, classes, (2, SIZE, SIZE), generator=g)
    return batch


def measure(method: str) -> dict:
    model, tasks, num_outputs = seeded_model(method)
    batch = seeded_batch(tasks, num_outputs)
    outputs = model(batch["image"])
    loss, per_task = MultiTaskLoss(tasks)(outputs, batch)
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return {
        "trainable_names": [n for n, _ in trainable],
        "trainable_count": count_parameters(model, trainable_only=True),
        "outputs_pooled": {
            t: F.avg_pool2d(o.detach(), 8).flatten().tolist() for t, o in outputs.items()
        },
        "outputs_at": {
            t: [o.detach()[:, :, y, x].flatten().tolist() for y, x in PIXELS]
            for t, o in outputs.items()
        },
        "loss": float(loss.detach()),
        "task_losses": {t: float(v) for t, v in per_task.items()},
        "grad_norms": {
            n: None if p.grad is None else float(p.grad.norm()) for n, p in trainable
        },
    }


def _close(actual, expected, where: str) -> None:
    if isinstance(expected, dict):
        assert set(actual) == set(expected), where
        for k in expected:
            _close(actual[k], expected[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _close(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=RTOL, abs=1e-12), where
    else:
        assert actual == expected, where


@pytest.fixture(scope="module")
def golden() -> dict:
    if os.environ.get("MTPEFT_WRITE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({m: measure(m) for m in ("mtlora", "mtlora_plus")},
                                     indent=0) + "\n")
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("method", ["mtlora", "mtlora_plus"])
def test_mtlora_matches_its_golden_output(method, golden):
    expected = golden[method]
    actual = measure(method)
    # the trainable set first: a wrong set explains every difference below
    assert actual["trainable_names"] == expected["trainable_names"]
    assert actual["trainable_count"] == expected["trainable_count"]
    for key in ("loss", "task_losses", "outputs_at", "outputs_pooled", "grad_norms"):
        _close(actual[key], expected[key], f"{method}.{key}")


def test_the_golden_file_is_not_trivial(golden):
    """The pinned values exercise what they should: MTLoRA trains the three merging
    reductions in full, MTLoRA+ freezes them and adapts them with TA-LoRA; every task has
    an output and every trainable tensor gets a gradient except the two factors of the
    shared stream's fc2 update in the very last block, which no decoder reads."""
    mtlora, plus = golden["mtlora"], golden["mtlora_plus"]
    assert mtlora["trainable_names"] != plus["trainable_names"]
    assert sum(n.endswith("merge.reduction.weight") for n in mtlora["trainable_names"]) == 3
    assert not any(n.endswith("merge.reduction.weight") for n in plus["trainable_names"])
    assert sum(n.endswith("merge.reduction.lora.a") for n in plus["trainable_names"]) == 3
    for values in (mtlora, plus):
        assert set(values["outputs_pooled"]) == {"semseg", "human_parts", "sal", "normals"}
        assert math.isfinite(values["loss"]) and values["loss"] > 0
        unused = {n for n, v in values["grad_norms"].items() if v is None}
        assert unused == {f"{UNUSED}a", f"{UNUSED}b"}
        assert all(v > 0 for v in values["grad_norms"].values() if v is not None)
