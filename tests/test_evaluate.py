"""`python -m benchmark.evaluate` (protocol §5.1): saved predictions scored against hand-computed
metrics at the original resolution."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.evaluate import main, probability_logits
from benchmark.metrics.binary import _f_thresholds, _linspace_thresholds
from tests.conftest import run_cli
from tests.real_trees import NYUD_VAL, PASCAL_VAL, make_nyud_tree, make_pascal_tree

SAL_IOU_T = [Fraction(4 + k, 20) for k in range(15)]  # 0.2, 0.25, ..., 0.9 exactly
SAL_F_T = [Fraction(k, 20) for k in range(1, 20)]  # 0.05, ..., 0.95


def _confusion_miou(pairs, classes):
    cm = np.zeros((classes, classes), np.int64)
    for gt, pred in pairs:
        keep = gt != 255
        np.add.at(cm, (gt[keep].astype(int), pred[keep].astype(int)), 1)
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), 0.0)
    return 100 * iou.mean()


def _above(codes, t: Fraction):
    """code / 255 > t, exactly."""
    return codes.astype(np.int64) * t.denominator > 255 * t.numerator


def _saliency(pairs):
    ious = []
    for t in SAL_IOU_T:
        per_image = []
        for gt, codes in pairs:
            pred, pos = _above(codes, t), gt == 1
            union = (pred | pos).sum()
            per_image.append((pred & pos).sum() / union if union else 1.0)
        ious.append(np.mean(per_image))
    fs = []
    for t in SAL_F_T:
        tp = sum((_above(c, t) & (g == 1)).sum() for g, c in pairs)
        fp = sum((_above(c, t) & (g == 0)).sum() for g, c in pairs)
        fn = sum((~_above(c, t) & (g == 1)).sum() for g, c in pairs)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        fs.append(1.3 * p * r / (0.3 * p + r) if p + r else 0.0)
    # the official "Beta maxF": a second sigmoid of code / 255, salient when >= t
    official = []
    for t in SAL_F_T:
        counts = []
        for g, c in pairs:
            pred = 1 / (1 + np.exp(-c.astype(np.float64) / 255)) >= float(t)
            counts.append(((pred & (g == 1)).sum(), (pred & (g != 255)).sum(), (g == 1).sum()))
        tp, pp, ap = (sum(x) for x in zip(*counts, strict=True))
        p, r = (tp / pp if pp else 0.0), (tp / ap if ap else 0.0)
        official.append(1.3 * p * r / (0.3 * p + r) if p + r else 0.0)
    return 100 * max(ious), 100 * max(fs), 100 * max(official)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A PASCAL tree, predictions for its val split, and the metrics computed by hand."""
    base = tmp_path_factory.mktemp("evaluate")
    root = base / "PASCAL_MT"
    expected = make_pascal_tree(root)
    predictions = base / "predictions"
    for task in ("semseg", "human_parts", "sal", "normals"):
        (predictions / task).mkdir(parents=True)
    semseg, parts, sal, angles = [], [], [], []
    for k, image_id in enumerate(PASCAL_VAL):
        ex = expected[image_id]
        rng = np.random.default_rng(50 + k)
        shape = ex["semseg"].shape
        pred = np.where(ex["semseg"] == 255, 0, ex["semseg"]).astype(np.uint8)
        pred[rng.random(shape) < 0.3] = 7
        Image.fromarray(pred, "L").save(predictions / "semseg" / f"{image_id}.png")
        semseg.append((ex["semseg"], pred))

        part_pred = rng.integers(0, 7, shape).astype(np.uint8)
        Image.fromarray(part_pred, "L").save(predictions / "human_parts" / f"{image_id}.png")
        parts.append((ex["human_parts"], part_pred))

        codes = rng.integers(0, 256, shape).astype(np.uint8)
        codes[0, :6] = [51, 102, 153, 204, 0, 255]  # exactly on thresholds, and the ends
        Image.fromarray(codes, "L").save(predictions / "sal" / f"{image_id}.png")
        sal.append((ex["sal"], codes))

        rgb = rng.integers(0, 256, (*shape, 3)).astype(np.uint8)
        Image.fromarray(rgb, "RGB").save(predictions / "normals" / f"{image_id}.png")
        n = rgb.astype(np.float64) * 2 / 255 - 1
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        gt = ex["normals"].astype(np.float64)
        valid = np.any(gt != 0, axis=-1)
        gt = gt / np.maximum(np.linalg.norm(gt, axis=-1, keepdims=True), 1e-12)
        dot = np.clip((n * gt).sum(-1), -1, 1)
        angles.append(np.degrees(np.arccos(dot))[valid])
    angles = np.concatenate(angles)
    sal_miou, sal_maxf, sal_maxf_official = _saliency(sal)
    by_hand = {
        "semseg": {"miou": _confusion_miou(semseg, 21)},
        "human_parts": {"miou": _confusion_miou(parts, 7)},
        "sal": {"miou": sal_miou, "maxf": sal_maxf, "maxf_official": sal_maxf_official},
        "normals": {
            "mean": angles.mean(),
            "median": np.median(angles),
            "rms": np.sqrt((angles ** 2).mean()),
            "within_11_25": 100 * (angles < 11.25).mean(),
            "within_22_5": 100 * (angles < 22.5).mean(),
            "within_30": 100 * (angles < 30).mean(),
        },
    }
    return root, predictions, by_hand, base


def test_the_evaluator_matches_hand_computed_metrics(scored, capsys):
    root, predictions, by_hand, base = scored
    code = main(["dataset=pascal_context", f"dataset.root={root}", f"predictions={predictions}",
                 f"dataset.cache_dir={base / 'cache'}", "progress=false"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 1
    metrics = json.loads(out[0])
    assert set(metrics) == set(by_hand)
    for task, values in by_hand.items():
        for name, value in values.items():
            tolerance = 0.006 if name == "median" else 1e-4  # median: 0.01-degree bins
            assert metrics[task][name] == pytest.approx(value, abs=tolerance), (task, name)


def test_the_command_prints_one_json_object(scored, tmp_path):
    root, predictions, by_hand, base = scored
    proc = run_cli("benchmark.evaluate", "dataset=pascal_context", f"dataset.root={root}",
                   f"predictions={predictions}", "dataset.tasks=[semseg,sal]",
                   f"dataset.cache_dir={base / 'cache'}", "progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert set(metrics) == {"semseg", "sal"}
    assert metrics["semseg"]["miou"] == pytest.approx(by_hand["semseg"]["miou"], abs=1e-6)


def test_a_missing_prediction_is_named(scored, tmp_path, capsys):
    root, predictions, _, base = scored
    partial = tmp_path / "partial"
    (partial / "semseg").mkdir(parents=True)
    for image_id in PASCAL_VAL[:-1]:
        (partial / "semseg" / f"{image_id}.png").write_bytes(
            (predictions / "semseg" / f"{image_id}.png").read_bytes())
    args = ["dataset=pascal_context", f"dataset.root={root}", "dataset.tasks=[semseg]",
            f"dataset.cache_dir={base / 'cache'}", "progress=false"]
    assert main([*args, f"predictions={partial}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(partial / "semseg" / f"{PASCAL_VAL[-1]}.png") in err and "missing" in err
    assert main([*args[:2], *args[3:], f"predictions={partial}"]) == 2  # no human_parts folder
    assert str(partial / "human_parts") in capsys.readouterr().err


def test_depth_predictions_on_nyud(tmp_path, capsys):
    root = tmp_path / "NYUD_MT"
    expected = make_nyud_tree(root, edge=False)
    predictions = tmp_path / "predictions" / "depth"
    predictions.mkdir(parents=True)
    errors = []
    for k, image_id in enumerate(NYUD_VAL):
        gt = expected[image_id]["depth"]
        pred = gt + (k + 1) * 0.1
        np.save(predictions / f"{image_id}.npy", pred.astype(np.float32))
        errors.append((pred - gt)[gt > 0])
    code = main(["dataset=nyud", f"dataset.root={root}", "dataset.tasks=[depth]",
                 f"predictions={predictions.parent}", f"dataset.cache_dir={tmp_path / 'cache'}",
                 "progress=false"])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    rmse = np.sqrt((np.concatenate(errors).astype(np.float64) ** 2).mean())
    assert metrics["depth"]["rmse"] == pytest.approx(rmse, rel=1e-5)


def test_probability_codes_keep_the_meters_threshold_semantics():
    """sigmoid(logit(code)) > t in float32 agrees with code / 255 > t in exact arithmetic
    for every code and every threshold the saliency and edge meters use."""
    prob = torch.sigmoid(probability_logits())
    for thresholds, exact in ((_linspace_thresholds(torch.device("cpu")), SAL_IOU_T),
                              (_f_thresholds(torch.device("cpu")), SAL_F_T)):
        for t, t_exact in zip(thresholds, exact, strict=True):
            for code in range(256):
                assert bool(prob[code] > t) == (Fraction(code, 255) > t_exact), (code, t_exact)
