"""All the meters of a model and the multi-task score Δm (`benchmark.metrics.multitask`)."""

from __future__ import annotations

import math

import pytest

from benchmark.metrics import Meter, SegmentationMeter, TaskMeters, build_meter, delta_m
from tests.metric_inputs import NUM_OUTPUTS, TASKS, sample_inputs


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
