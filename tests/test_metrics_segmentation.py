"""The confusion-matrix meter of `semseg` and `human_parts` (`benchmark.metrics.segmentation`)
against hand-computed values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from benchmark.metrics import SegmentationMeter
from tests.metric_inputs import IGN, one_hot_logits

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


def test_no_warning_on_clean_segmentation():
    meter = SegmentationMeter(3)
    meter.update(one_hot_logits(SEG_PRED, 3), SEG_TARGET)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        meter.compute()
