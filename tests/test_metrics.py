"""Meters and Δm against hand-computed values and independent numpy implementations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from benchmark.metrics import (
    DepthMeter,
    EdgeMeter,
    Meter,
    NormalsMeter,
    SaliencyMeter,
    SegmentationMeter,
    TaskMeters,
    build_meter,
    delta_m,
)

IGN = 255


def one_hot_logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) class ids -> (N, C, H, W) logits whose argmax is those ids."""
    return torch.nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2).float() * 5 - 1


def logit(p) -> torch.Tensor:
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p)).float()


# ---------------------------------------------------------------------------- segmentation


# 2 x 3 image, 3 classes; the last pixel is ignored (and predicted as class 0).
SEG_TARGET = torch.tensor([[[0, 0, 1], [1, 2, IGN]]])
SEG_PRED = torch.tensor([[[0, 1, 1], [1, 1, 0]]])
# Rows = ground truth, columns = prediction, over the 5 labelled pixels.
SEG_CONFUSION = [[1, 1, 0], [0, 2, 0], [0, 1, 0]]


def test_segmentation_hand_computed():
    meter = SegmentationMeter(3)
    meter.update(one_hot_logits(SEG_PRED, 3), SEG_TARGET)
    assert meter.confusion_matrix().tolist() == SEG_CONFUSION
    # class 0: TP 1, FP 0, FN 1 -> 1/2; class 1: TP 2, FP 2, FN 0 -> 1/2;
    # class 2: TP 0, FP 0, FN 1 -> 0.
    assert meter.per_class_iou() == pytest.approx([50.0, 50.0, 0.0])
    out = meter.compute()
    assert out["miou"] == pytest.approx(100 / 3)
    assert out["pixel_acc"] == pytest.approx(60.0)  # 3 of 5 labelled pixels


def test_segmentation_absent_class_scores_zero():
    meter = SegmentationMeter(4)  # class 3 is in neither labels nor predictions
    meter.update(one_hot_logits(SEG_PRED, 4), SEG_TARGET)
    assert meter.per_class_iou() == pytest.approx([50.0, 50.0, 0.0, 0.0])
    assert meter.compute()["miou"] == pytest.approx(25.0)


def test_segmentation_integer_predictions_and_perfect_score():
    meter = SegmentationMeter(3)
    meter.update(SEG_PRED, SEG_TARGET)
    assert meter.confusion_matrix().tolist() == SEG_CONFUSION
    perfect = SegmentationMeter(3)
    target = torch.tensor([[[0, 1], [2, IGN]]])
    perfect.update(torch.tensor([[[0, 1], [2, 1]]]), target)
    assert perfect.compute() == pytest.approx({"miou": 100.0, "pixel_acc": 100.0})


def test_segmentation_accumulates_like_one_update():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, 7, 9, generator=g)
    target = torch.randint(0, 5, (6, 7, 9), generator=g)
    target[torch.rand(6, 7, 9, generator=g) < 0.2] = IGN
    streamed, whole = SegmentationMeter(5), SegmentationMeter(5)
    for i in range(0, 6, 2):
        streamed.update(logits[i : i + 2], target[i : i + 2])
    whole.update(logits, target)
    assert torch.equal(streamed.confusion_matrix(), whole.confusion_matrix())
    assert streamed.compute() == whole.compute()
    # and both agree with a confusion matrix counted pixel by pixel
    expected = np.zeros((5, 5), dtype=np.int64)
    for t, p in zip(target.flatten().tolist(), logits.argmax(1).flatten().tolist(), strict=True):
        if t != IGN:
            expected[t, p] += 1
    np.testing.assert_array_equal(whole.confusion_matrix().numpy(), expected)


def test_segmentation_out_of_range_label_is_skipped_with_warning():
    meter = SegmentationMeter(3)
    meter.update(one_hot_logits(SEG_PRED, 3), torch.tensor([[[0, 0, 1], [1, 7, IGN]]]))
    assert meter.confusion_matrix().sum() == 4
    with pytest.warns(RuntimeWarning, match="outside"):
        meter.compute()


def test_segmentation_rejects_wrong_shapes():
    meter = SegmentationMeter(3)
    with pytest.raises(ValueError):
        meter.update(torch.randn(1, 4, 2, 3), SEG_TARGET)  # wrong number of classes
    with pytest.raises(ValueError):
        meter.update(torch.randn(1, 3, 4, 6), SEG_TARGET)  # wrong resolution


# ---------------------------------------------------------------------------- saliency


def test_saliency_iou_hand_computed():
    # Thresholds 0.20, 0.25, ..., 0.90. Probabilities stay clear of them.
    # Image A: labels [[0, 1], [1, ignored]], probabilities [[0.12, 0.33], [0.62, 0.97]].
    #   t <= 0.30: predicted {0.33, 0.62} = ground truth           -> IoU 1   (3 thresholds)
    #   0.35 <= t <= 0.60: predicted {0.62}                        -> IoU 1/2 (6 thresholds)
    #   t >= 0.65: nothing predicted (0.97 is ignored)             -> IoU 0   (6 thresholds)
    # Image B: all background, probabilities [[0.05, 0.27], [0.10, 0.18]].
    #   t <= 0.25: one false positive                              -> IoU 0
    #   t >= 0.30: both masks empty                                -> IoU 1
    probs = torch.tensor([[[0.12, 0.33], [0.62, 0.97]], [[0.05, 0.27], [0.10, 0.18]]])
    labels = torch.tensor([[[0, 1], [1, IGN]], [[0, 0], [0, 0]]])
    meter = SaliencyMeter()
    meter.update(logit(probs).unsqueeze(1), labels)
    a = [1.0] * 3 + [0.5] * 6 + [0.0] * 6
    b = [0.0] * 2 + [1.0] * 13
    expected = [100 * (x + y) / 2 for x, y in zip(a, b, strict=True)]
    assert meter.iou_per_threshold() == pytest.approx(expected)
    assert meter.compute()["miou"] == pytest.approx(100.0)  # at t = 0.30

    # Both images empty everywhere -> IoU 1 at every threshold.
    empty = SaliencyMeter()
    empty.update(torch.full((2, 1, 3, 3), -9.0), torch.zeros(2, 3, 3, dtype=torch.long))
    assert empty.compute()["miou"] == pytest.approx(100.0)


def numpy_sal_reference(logits: np.ndarray, labels: np.ndarray):
    """Straightforward loops: per-image IoU over linspace thresholds, pooled maxF (beta^2 0.3)."""
    prob = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    valid = labels != IGN
    gt = (labels == 1) & valid
    ious = []
    for t in np.linspace(0.2, 0.9, 15):
        per_image = []
        for i in range(prob.shape[0]):
            pred = (prob[i] > t) & valid[i]
            inter = np.sum(pred & gt[i])
            union = np.sum(pred | gt[i])
            per_image.append(1.0 if union == 0 else inter / union)
        ious.append(np.mean(per_image))
    thresholds = np.arange(0.05, 1, 0.05)
    assert len(thresholds) == 19
    best_f = 0.0
    for t in thresholds:
        pred = (prob > t) & valid
        tp = np.sum(pred & gt)
        fp = np.sum(pred & ~gt & valid)
        fn = np.sum(~pred & gt)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        if precision + recall > 0:
            f = 1.3 * precision * recall / (0.3 * precision + recall)
            best_f = max(best_f, f)
    return 100 * max(ious), 100 * best_f


def random_binary_batch(seed: int, n=3, h=11, w=13, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 1, h, w, generator=g) * scale
    labels = (torch.rand(n, h, w, generator=g) < 0.35).long()
    labels[torch.rand(n, h, w, generator=g) < 0.1] = IGN
    return logits, labels


def test_saliency_matches_numpy_reference():
    meter = SaliencyMeter()
    batches = [random_binary_batch(seed) for seed in (1, 2, 3)]
    for logits, labels in batches:
        meter.update(logits, labels)
    logits = torch.cat([b[0] for b in batches]).squeeze(1).numpy()
    labels = torch.cat([b[1] for b in batches]).numpy()
    miou, maxf = numpy_sal_reference(logits, labels)
    out = meter.compute()
    assert out["miou"] == pytest.approx(miou, abs=1e-9)
    assert out["maxf"] == pytest.approx(maxf, abs=1e-9)


def test_saliency_official_maxf_hand_computed():
    """The official "Beta maxF" scores q = sigmoid(prob) >= t; q lies in (0.5, 0.732), so only
    t = 0.55, 0.60, 0.65, 0.70 (prob 0.2007, 0.4055, 0.6190, 0.8473) discriminate.

    Probabilities (label): 0.12 (1), 0.33 (1), 0.52 (0), 0.93 (1), 0.02 (0), 0.97 (ignored).
    Official, F = 1.3 P R / (0.3 P + R):
      t <= 0.50: all five predicted, P = 3/5, R = 1          -> 0.78 / 1.18  = 0.6610
      t = 0.55: {0.33, 0.52, 0.93}, P = R = 2/3               -> 2/3
      t = 0.60: {0.52, 0.93}, P = 1/2, R = 1/3                -> 0.2167 / 0.4833 = 0.4483
      t = 0.65, 0.70: {0.93}, P = 1, R = 1/3                 -> 13/19 = 0.6842 (the max)
      t >= 0.75: nothing predicted                           -> 0
    Ours (prob > t): t = 0.05, 0.10 predict all but 0.02, P = 3/4, R = 1 -> 39/49 (the max).
    """
    probs = torch.tensor([[[0.12, 0.33, 0.52], [0.93, 0.02, 0.97]]])
    labels = torch.tensor([[[1, 1, 0], [1, 0, IGN]]])
    meter = SaliencyMeter()
    meter.update(logit(probs).unsqueeze(1), labels)
    out = meter.compute()
    assert out["maxf_official"] == pytest.approx(100 * 13 / 19)
    assert out["maxf"] == pytest.approx(100 * 39 / 49)

    # A probability of exactly 0 gives q = 0.5, which counts at t = 0.5 (>=, not >): with
    # one positive pixel at probability 0, t <= 0.5 finds it, P = R = 1.
    zero = SaliencyMeter()
    zero.update(torch.full((1, 1, 1, 1), -math.inf), torch.ones(1, 1, 1, dtype=torch.long))
    assert zero.compute()["maxf_official"] == pytest.approx(100.0)
    assert zero.compute()["maxf"] == 0.0


def test_saliency_official_maxf_matches_numpy_reference():
    meter = SaliencyMeter()
    batches = [random_binary_batch(seed) for seed in (4, 5, 6)]
    for logits, labels in batches:
        meter.update(logits, labels)
    prob = torch.sigmoid(torch.cat([b[0] for b in batches]).squeeze(1)).double().numpy()
    labels = torch.cat([b[1] for b in batches]).numpy()
    q = 1.0 / (1.0 + np.exp(-prob))  # the second sigmoid
    valid = labels != IGN
    gt = (labels == 1) & valid
    best = 0.0
    for t in np.arange(0.05, 1, 0.05):
        pred = (q >= t) & valid
        tp, pp, ap = np.sum(pred & gt), np.sum(pred), np.sum(gt)
        precision, recall = (tp / pp if pp else 0.0), (tp / ap if ap else 0.0)
        if precision + recall > 0:
            best = max(best, 1.3 * precision * recall / (0.3 * precision + recall))
    assert meter.compute()["maxf_official"] == pytest.approx(100 * best, abs=1e-9)


# ---------------------------------------------------------------------------- normals


def test_normals_known_angles():
    up = [0.0, 0.0, 1.0]
    # Five pixels in a row: 0, 45, 90 and 180 degrees (magnitudes differ), plus one unlabelled.
    pred = torch.tensor([[0, 0, 2.0], [1, 0, 1], [3, 0, 0], [0, 0, -0.5], [1, 2, 3]])
    label = torch.tensor([up, up, up, up, [0.0, 0.0, 0.0]])
    meter = NormalsMeter()
    meter.update(pred.T.reshape(1, 3, 1, 5), label.T.reshape(1, 3, 1, 5))
    out = meter.compute()
    assert out["mean"] == pytest.approx((0 + 45 + 90 + 180) / 4, abs=1e-3)
    assert out["median"] == pytest.approx((45 + 90) / 2, abs=0.01)
    assert out["rms"] == pytest.approx(math.sqrt((45**2 + 90**2 + 180**2) / 4), abs=1e-3)
    assert out["within_11_25"] == pytest.approx(25.0)
    assert out["within_22_5"] == pytest.approx(25.0)
    assert out["within_30"] == pytest.approx(25.0)


def test_normals_random_against_numpy():
    g = torch.Generator().manual_seed(4)
    meter = NormalsMeter()
    preds, labels = [], []
    for _ in range(3):
        label = torch.nn.functional.normalize(torch.randn(2, 3, 16, 16, generator=g), dim=1)
        pred = label + 0.6 * torch.randn(2, 3, 16, 16, generator=g)
        label[:, :, :3] = 0  # unlabelled rows
        meter.update(pred, label)
        preds.append(pred)
        labels.append(label)
    p = torch.cat(preds).double().numpy().transpose(0, 2, 3, 1).reshape(-1, 3)
    t = torch.cat(labels).double().numpy().transpose(0, 2, 3, 1).reshape(-1, 3)
    valid = np.linalg.norm(t, axis=1) > 0
    p = p[valid] / np.linalg.norm(p[valid], axis=1, keepdims=True)
    t = t[valid] / np.linalg.norm(t[valid], axis=1, keepdims=True)
    angle = np.degrees(np.arccos(np.clip(np.sum(p * t, axis=1), -1, 1)))
    out = meter.compute()
    assert out["median"] == pytest.approx(np.median(angle), abs=0.01)
    assert out["mean"] == pytest.approx(angle.mean(), abs=1e-3)
    assert out["rms"] == pytest.approx(np.sqrt(np.mean(angle**2)), abs=1e-3)
    assert out["within_22_5"] == pytest.approx(100 * np.mean(angle < 22.5), abs=1e-9)


# ---------------------------------------------------------------------------- depth, edge


def test_depth_hand_computed():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    label = torch.tensor([1.5, 0.0, 2.0, 8.0]).reshape(1, 2, 2)  # the 0 is unlabelled
    meter = DepthMeter()
    meter.update(pred, label)
    out = meter.compute()
    # errors -0.5, 1, -4 -> MSE (0.25 + 1 + 16) / 3
    assert out["rmse"] == pytest.approx(math.sqrt(17.25 / 3))
    assert out["abs_rel"] == pytest.approx((0.5 / 1.5 + 1 / 2 + 4 / 8) / 3)


def test_edge_maxf_hand_computed():
    # labels 1, 0, 1, 0 and an ignored pixel with a high probability.
    probs = torch.tensor([0.92, 0.83, 0.37, 0.12, 0.99]).reshape(1, 1, 1, 5)
    labels = torch.tensor([1, 0, 1, 0, IGN]).reshape(1, 1, 5)
    meter = EdgeMeter()
    meter.update(logit(probs), labels)
    # t in 0.15..0.35: predicted {0.92, 0.83, 0.37}: P = 2/3, R = 1 -> F = 0.8 (the best);
    # t <= 0.10: P = 1/2, R = 1 -> 2/3; 0.40..0.80: 1/2; 0.85, 0.90: 2/3; 0.95: 0.
    assert meter.compute()["maxf"] == pytest.approx(80.0)


def test_edge_matches_numpy_reference():
    logits, labels = random_binary_batch(7, scale=3.0)
    meter = EdgeMeter()
    meter.update(logits, labels)
    prob = torch.sigmoid(logits.double()).squeeze(1).numpy()
    lab = labels.numpy()
    valid, gt = lab != IGN, lab == 1
    best = 0.0
    for t in np.arange(0.05, 1, 0.05):
        pred = (prob > t) & valid
        tp, fp, fn = np.sum(pred & gt), np.sum(pred & ~gt), np.sum(~pred & gt)
        if tp:
            precision, recall = tp / (tp + fp), tp / (tp + fn)
            best = max(best, 2 * precision * recall / (precision + recall))
    assert meter.compute()["maxf"] == pytest.approx(100 * best, abs=1e-9)


# ---------------------------------------------------------------------------- common behaviour


def sample_inputs(task: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    n, h, w = 2, 6, 7
    if task in ("semseg", "human_parts"):
        c = 5 if task == "semseg" else 7
        target = torch.randint(0, c, (n, h, w), generator=g)
        target[:, 0] = IGN
        return torch.randn(n, c, h, w, generator=g), target
    if task in ("sal", "edge"):
        return random_binary_batch(seed, n, h, w)
    if task == "normals":
        target = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
        target[:, :, 0] = 0
        return target + torch.randn(n, 3, h, w, generator=g), target
    target = torch.rand(n, 1, h, w, generator=g) * 5
    target[:, :, 0] = 0
    return target + torch.randn(n, 1, h, w, generator=g), target


NUM_OUTPUTS = {"semseg": 5, "human_parts": 7, "sal": 1, "normals": 3, "depth": 1, "edge": 1}
TASKS = list(NUM_OUTPUTS)


@pytest.mark.parametrize("task", TASKS)
def test_bfloat16_predictions(task):
    pred, target = sample_inputs(task, 11)
    low, ref = build_meter(task, NUM_OUTPUTS[task]), build_meter(task, NUM_OUTPUTS[task])
    low.update(pred.bfloat16(), target)
    ref.update(pred.bfloat16().float(), target)  # same values in float32
    out = low.compute()
    assert out == pytest.approx(ref.compute(), rel=1e-6, abs=1e-6)
    assert all(math.isfinite(v) for v in out.values())


@pytest.mark.parametrize("task", TASKS)
def test_summed_state_equals_single_meter(task):
    """Simulates all_reduce(SUM) of state_tensors across two processes."""
    first, second, whole = (build_meter(task, NUM_OUTPUTS[task]) for _ in range(3))
    for seed, part in ((1, first), (2, second), (3, first)):
        pred, target = sample_inputs(task, seed)
        part.update(pred, target)
        whole.update(pred, target)
    for mine, theirs in zip(first.state_tensors(), second.state_tensors(), strict=True):
        mine += theirs  # in place, as all_reduce does
    assert first.compute() == pytest.approx(whole.compute(), rel=1e-12, abs=1e-9)


def test_state_tensors_are_live_storage_and_reset():
    meter = DepthMeter()
    pred, target = sample_inputs("depth", 0)
    meter.update(pred, target)
    before = meter.compute()["rmse"]
    for t in meter.state_tensors():
        t.mul_(2)  # scaling sums and counts alike leaves the RMSE unchanged
    assert meter.compute()["rmse"] == pytest.approx(before)
    meter.state_tensors()[-1].zero_()  # count
    assert meter.state_tensors()[-1].item() == 0
    meter.reset()
    assert all(int(t.abs().sum()) == 0 for t in meter.state_tensors())
    assert math.isnan(meter.compute()["rmse"])


def test_update_under_inference_mode_keeps_state_reducible():
    meter = SegmentationMeter(5, device="meta")  # re-allocated on the first update's device
    pred, target = sample_inputs("semseg", 0)
    with torch.inference_mode():
        meter.update(pred, target)
    for t in meter.state_tensors():
        assert not t.is_inference()
        t.add_(t)  # an in-place collective outside inference mode must be allowed


def test_meta_device_update_needs_no_host_sync():
    """Meta tensors have no data: any .item(), host copy or data-dependent shape would raise."""
    with pytest.raises(RuntimeError):
        torch.zeros((), device="meta").item()
    for task in TASKS:
        pred, target = sample_inputs(task, 0)
        meter = build_meter(task, NUM_OUTPUTS[task], device="meta")
        meter.update(pred.to("meta", torch.bfloat16), target.to("meta"))
        assert all(t.device.type == "meta" for t in meter.state_tensors())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_update_does_not_synchronise():
    meters = TaskMeters(NUM_OUTPUTS, device="cuda")
    inputs = {task: sample_inputs(task, 0) for task in TASKS}
    outputs = {task: p.cuda().bfloat16() for task, (p, _) in inputs.items()}
    batch = {task: t.cuda() for task, (_, t) in inputs.items()}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        meters.update(outputs, batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu = TaskMeters(NUM_OUTPUTS)
    cpu.update({k: v.cpu() for k, v in outputs.items()}, {k: v.cpu() for k, v in batch.items()})
    got, want = meters.compute(), cpu.compute()
    for task in TASKS:
        assert got[task] == pytest.approx(want[task], rel=1e-4, abs=1e-3)


def test_task_meters_round_trip():
    meters = TaskMeters(NUM_OUTPUTS)
    inputs = {task: sample_inputs(task, 5) for task in TASKS}
    meters.update({t: p for t, (p, _) in inputs.items()}, {t: y for t, (_, y) in inputs.items()})
    out = meters.compute()
    assert list(out) == TASKS
    assert set(out["semseg"]) == {"miou", "pixel_acc"}
    assert set(out["sal"]) == {"miou", "maxf", "maxf_official"}
    assert set(out["normals"]) == {
        "mean", "median", "rms", "within_11_25", "within_22_5", "within_30"
    }  # fmt: skip
    assert set(out["depth"]) == {"rmse", "abs_rel"}
    assert set(out["edge"]) == {"maxf"}
    n_state = sum(len(meters[t].state_tensors()) for t in TASKS)
    assert len(meters.state_tensors()) == n_state
    single = build_meter("normals", 3)
    single.update(*inputs["normals"])
    assert out["normals"] == single.compute()
    with pytest.raises(KeyError, match="depth"):
        meters.update(
            {t: p for t, (p, _) in inputs.items() if t != "depth"},
            {t: y for t, (_, y) in inputs.items()},
        )


def test_build_meter_validation():
    assert isinstance(build_meter("semseg", 59), SegmentationMeter)
    assert build_meter("human_parts", 7).num_classes == 7
    assert isinstance(build_meter("edge", 1), Meter)
    with pytest.raises(ValueError, match="human_parts"):
        build_meter("human_parts", 6)
    with pytest.raises(ValueError, match="unknown task"):
        build_meter("optical_flow", 2)


# ---------------------------------------------------------------------------- Δm


def rows(semseg, parts, sal, normals):
    return {
        "semseg": {"miou": semseg},
        "human_parts": {"miou": parts},
        "sal": {"miou": sal, "maxf": 0.0},
        "normals": {"mean": normals},
    }


SINGLE_TASK = rows(67.21, 61.93, 62.35, 17.97)


def test_delta_m_published_rows():
    # MTLoRA (r = 16) and full fine-tuning rows of the MTLoRA paper, PASCAL-Context.
    assert delta_m(rows(68.19, 58.99, 64.48, 17.03), SINGLE_TASK) == pytest.approx(1.34, abs=0.01)
    assert delta_m(rows(67.56, 60.24, 65.21, 16.64), SINGLE_TASK) == pytest.approx(2.45, abs=0.01)
    assert delta_m(SINGLE_TASK, SINGLE_TASK) == 0.0


def test_delta_m_signs_and_task_selection():
    # normals is lower-is-better: a 10 % lower error is +10 %.
    better_normals = rows(67.21, 61.93, 62.35, 17.97 * 0.9)
    assert delta_m(better_normals, SINGLE_TASK, tasks=["normals"]) == pytest.approx(10.0)
    assert delta_m(better_normals, SINGLE_TASK) == pytest.approx(2.5)
    # default: the reference's tasks the method also has
    subset = {"semseg": {"miou": 67.21 * 1.1}}
    assert delta_m(subset, SINGLE_TASK) == pytest.approx(10.0)


def test_delta_m_missing_metric_raises():
    method = rows(68.19, 58.99, 64.48, 17.03)
    del method["normals"]["mean"]
    with pytest.raises(ValueError, match="normals"):
        delta_m(method, SINGLE_TASK)
    with pytest.raises(ValueError, match="depth"):
        delta_m(SINGLE_TASK, SINGLE_TASK, tasks=["semseg", "depth"])
    with pytest.raises(ValueError, match="share no task"):
        delta_m({"depth": {"rmse": 0.5}}, SINGLE_TASK)
    with pytest.raises(ValueError, match="semseg"):
        delta_m(SINGLE_TASK, rows(0.0, 61.93, 62.35, 17.97))
    assert math.isnan(delta_m(rows(math.nan, 61.93, 62.35, 17.97), SINGLE_TASK))


def test_no_warning_on_clean_segmentation():
    meter = SegmentationMeter(3)
    meter.update(one_hot_logits(SEG_PRED, 3), SEG_TARGET)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        meter.compute()


def test_old_records_read_normals_rmse_as_rms(tmp_path):
    """Records written before the rename call the true RMS of the angle `normals.rmse`; they
    read as `normals.rms`, and the report names the papers' "rmse" (the mean angle)."""
    import json

    from benchmark.records import read_record
    from benchmark.report.tables import metric_header as _metric_header

    path = tmp_path / "result.json"
    old = {"metrics": {"normals": {"mean": 17.0, "rmse": 25.0}, "depth": {"rmse": 0.5}}}
    path.write_text(json.dumps(old))
    metrics = read_record(path)["metrics"]
    assert metrics["normals"] == {"mean": 17.0, "rms": 25.0}
    assert metrics["depth"] == {"rmse": 0.5}  # depth's rmse is a true RMSE: kept
    new = {"metrics": {"normals": {"mean": 17.0, "rms": 24.0}}}
    path.write_text(json.dumps(new))
    assert read_record(path)["metrics"] == new["metrics"]
    assert _metric_header("normals") == 'normals mean angle ° (papers\' "rmse") ↓'
