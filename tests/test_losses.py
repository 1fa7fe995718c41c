"""Task losses against hand computations and torch's reference implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmark.losses import EDGE_POS_WEIGHT, MultiTaskLoss, balanced_bce, task_loss
from benchmark.tasks import TASKS

IGN = 255


def softplus(x: float) -> float:
    """-log(sigmoid(-x)) = log(1 + e^x), written out independently of torch."""
    return math.log1p(math.exp(x))


def test_cross_entropy_matches_torch_on_valid_pixels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    target[0, :2] = IGN
    loss = task_loss("semseg")(logits, target)
    # mean of -log softmax at the label, over labelled pixels only
    log_p = torch.log_softmax(logits, dim=1).permute(0, 2, 3, 1)[target != IGN]
    expected = -log_p.gather(1, target[target != IGN].unsqueeze(1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, target, ignore_index=IGN).item())
    assert task_loss("human_parts") is task_loss("semseg")


@pytest.mark.parametrize("task", ["semseg", "sal", "edge", "normals", "depth"])
def test_batch_without_valid_pixels_gives_zero_with_grad(task):
    if task == "semseg":
        pred, target = torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), IGN)
    elif task in ("sal", "edge"):
        pred, target = torch.randn(2, 1, 4, 4), torch.full((2, 4, 4), IGN)
    elif task == "normals":
        pred, target = torch.randn(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    else:
        pred, target = torch.randn(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    pred.requires_grad_(True)
    loss = task_loss(task)(pred, target)
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum().item() == 0.0


def test_saliency_balanced_bce_hand_computed():
    z = [2.0, -1.0, 0.5, 3.0]
    labels = [1, 0, 0, IGN]
    pred = torch.tensor(z).reshape(1, 1, 2, 2)
    target = torch.tensor(labels).reshape(1, 2, 2)
    # 3 valid pixels, 1 positive -> w = 1 - 1/3
    w = 2 / 3
    expected = (w * softplus(-2.0) + (1 - w) * softplus(-1.0) + (1 - w) * softplus(0.5)) / 3
    assert task_loss("sal")(pred, target).item() == pytest.approx(expected, rel=1e-6)
    assert balanced_bce(pred, target).item() == pytest.approx(expected, rel=1e-6)
    # edge: fixed weight 0.95 on positives, 0.05 on negatives
    w = EDGE_POS_WEIGHT
    expected = (w * softplus(-2.0) + (1 - w) * softplus(-1.0) + (1 - w) * softplus(0.5)) / 3
    assert task_loss("edge")(pred, target).item() == pytest.approx(expected, rel=1e-6)


def test_saliency_weight_is_pooled_over_the_batch_and_has_no_gradient():
    # image 0 all positive, image 1 all negative: w = 1/2 over the batch (not per image)
    pred = torch.tensor([[[[1.0, -2.0]]], [[[0.3, 4.0]]]], requires_grad=True)
    target = torch.tensor([[[1, 1]], [[0, 0]]])
    loss = task_loss("sal")(pred, target)
    expected = 0.5 * (softplus(-1.0) + softplus(2.0) + softplus(0.3) + softplus(4.0)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # d/dz of 0.5 * softplus(-z) / 4 at z = 1 is -0.5 * sigmoid(-1) / 4 (w is a constant)
    assert pred.grad[0, 0, 0, 0].item() == pytest.approx(-0.5 / (1 + math.e) / 4, rel=1e-5)


def test_balanced_bce_is_stable_for_extreme_logits():
    pred = torch.tensor([[[[200.0, -200.0, 200.0, -200.0]]]], requires_grad=True)
    target = torch.tensor([[[1, 0, 0, 1]]])
    loss = task_loss("sal")(pred, target)
    # two confident mistakes cost 200 each, weighted 1/2, mean over 4 pixels
    assert loss.item() == pytest.approx(0.5 * 400 / 4, rel=1e-5)
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_normals_loss():
    g = torch.Generator().manual_seed(1)
    label = F.normalize(torch.randn(2, 3, 4, 5, generator=g), dim=1)
    scale = torch.rand(2, 1, 4, 5, generator=g) * 10 + 0.1
    assert task_loss("normals")(label * scale, label).item() == pytest.approx(0.0, abs=1e-6)

    # one labelled pixel: prediction (0, 3, 4) -> (0, 0.6, 0.8) against (1, 0, 0);
    # the other pixel has no label and a wild prediction.
    pred = torch.tensor([[0.0, 3.0, 4.0], [9.0, -9.0, 9.0]]).T.reshape(1, 3, 1, 2)
    label = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 2)
    assert task_loss("normals")(pred, label).item() == pytest.approx((1 + 0.6 + 0.8) / 3)


def test_depth_loss():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    label = torch.tensor([1.5, 0.0, 2.0, 8.0]).reshape(1, 1, 2, 2)
    assert task_loss("depth")(pred, label).item() == pytest.approx((0.5 + 1 + 4) / 3)
    assert task_loss("depth")(pred, label.squeeze(1)).item() == pytest.approx((0.5 + 1 + 4) / 3)
    # unlabelled NaN depth does not poison the gradient
    label[0, 0, 0, 1] = float("nan")
    pred.requires_grad_(True)
    task_loss("depth")(pred, label).backward()
    assert torch.isfinite(pred.grad).all()


def batch_for(tasks, seed=0, n=2, h=4, w=5):
    g = torch.Generator().manual_seed(seed)
    outputs, batch = {}, {}
    for task in tasks:
        if task in ("semseg", "human_parts"):
            c = 7
            outputs[task] = torch.randn(n, c, h, w, generator=g)
            batch[task] = torch.randint(0, c, (n, h, w), generator=g)
        elif task in ("sal", "edge"):
            outputs[task] = torch.randn(n, 1, h, w, generator=g)
            batch[task] = torch.randint(0, 2, (n, h, w), generator=g)
        elif task == "normals":
            outputs[task] = torch.randn(n, 3, h, w, generator=g)
            batch[task] = F.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
        else:
            outputs[task] = torch.randn(n, 1, h, w, generator=g)
            batch[task] = torch.rand(n, 1, h, w, generator=g) + 0.5
    return outputs, batch


ALL_TASKS = ["semseg", "human_parts", "sal", "normals", "depth", "edge"]


def test_multitask_loss_is_weighted_sum():
    outputs, batch = batch_for(ALL_TASKS)
    for name in outputs:
        outputs[name].requires_grad_(True)
    criterion = MultiTaskLoss(ALL_TASKS)
    total, per_task = criterion(outputs, batch)
    assert list(per_task) == ALL_TASKS
    expected = sum(TASKS[t].loss_weight * task_loss(t)(outputs[t], batch[t]) for t in ALL_TASKS)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert criterion.weights == {
        "semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "normals": 10.0, "depth": 1.0, "edge": 50.0
    }  # fmt: skip
    for task, loss in per_task.items():
        assert isinstance(loss, torch.Tensor) and loss.grad_fn is None and loss.dim() == 0
        assert loss.item() == pytest.approx(task_loss(task)(outputs[task], batch[task]).item())
    total.backward()
    assert all(outputs[t].grad is not None for t in ALL_TASKS)


def test_multitask_loss_custom_weights():
    outputs, batch = batch_for(["semseg", "sal"])
    total, per_task = MultiTaskLoss(["semseg", "sal"], weights={"sal": 0.5})(outputs, batch)
    assert total.item() == pytest.approx(per_task["semseg"].item() + 0.5 * per_task["sal"].item())
    with pytest.raises(ValueError, match="depth"):
        MultiTaskLoss(["semseg"], weights={"depth": 1.0})
    with pytest.raises(KeyError, match="sal"):
        MultiTaskLoss(["semseg", "sal"])(outputs, {"semseg": batch["semseg"]})


def test_losses_are_float32_for_low_precision_inputs():
    outputs, batch = batch_for(ALL_TASKS, seed=3)
    criterion = MultiTaskLoss(ALL_TASKS)
    reference, _ = criterion({t: o.bfloat16().float() for t, o in outputs.items()}, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, per_task = criterion({t: o.bfloat16() for t, o in outputs.items()}, batch)
    assert total.dtype == torch.float32
    assert all(loss.dtype == torch.float32 for loss in per_task.values())
    assert total.item() == pytest.approx(reference.item(), rel=1e-5)


def test_unknown_task_raises():
    with pytest.raises(ValueError, match="unknown task"):
        task_loss("optical_flow")
    with pytest.raises(ValueError):
        MultiTaskLoss([])
