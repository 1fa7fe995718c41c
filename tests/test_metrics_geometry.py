"""The normals and depth meters (`benchmark.metrics.geometry`) against hand-computed values and
an independent numpy implementation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from benchmark.metrics import DepthMeter, NormalsMeter


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


def test_depth_hand_computed():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    label = torch.tensor([1.5, 0.0, 2.0, 8.0]).reshape(1, 2, 2)  # the 0 is unlabelled
    meter = DepthMeter()
    meter.update(pred, label)
    out = meter.compute()
    # errors -0.5, 1, -4 -> MSE (0.25 + 1 + 16) / 3
    assert out["rmse"] == pytest.approx(math.sqrt(17.25 / 3))
    assert out["abs_rel"] == pytest.approx((0.5 / 1.5 + 1 / 2 + 4 / 8) / 3)


def test_old_records_read_normals_rmse_as_rms(tmp_path):
    """Records written before the rename call the true RMS of the angle `normals.rmse`; they
    read as `normals.rms`, and the report names the papers' "rmse" (the mean angle)."""

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


@pytest.mark.parametrize("shapes", [((2, 3, 4, 5), (2, 3, 4, 4)), ((2, 1, 4, 5), (2, 1, 4, 5))])
def test_normals_meter_and_loss_refuse_the_same_shapes(shapes):
    """One check (`benchmark.tasks.check_normals`) guards the meter and the loss alike."""
    from benchmark.losses import task_loss

    pred, target = (torch.ones(shape) for shape in shapes)
    message = r"normals: expected prediction and label of the same shape \(N, 3, H, W\)"
    with pytest.raises(ValueError, match=message):
        NormalsMeter().update(pred, target)
    with pytest.raises(ValueError, match=message):
        task_loss("normals")(pred, target)

