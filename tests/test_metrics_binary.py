"""The saliency and edge meters (`benchmark.metrics.binary`) against hand-computed values and
independent numpy implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.metrics import EdgeMeter, SaliencyMeter
from tests.metric_inputs import IGN, logit, random_binary_batch


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
