"""What every meter does (`benchmark.metrics.meter`): low-precision predictions, summed state
(distributed evaluation), live state tensors, no host synchronisation."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.metrics import DepthMeter, SegmentationMeter, TaskMeters, build_meter
from tests.metric_inputs import NUM_OUTPUTS, TASKS, sample_inputs


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
