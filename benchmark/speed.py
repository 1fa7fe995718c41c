"""What a measured speed is set against (`benchmark.perf`): the FLOPs of a step, by PyTorch's
counter with grouped convolutions counted right; the matrix-multiply rate measured on the
device, and the datasheet peaks of H100/H200 SXM (the denominators of `mfu` and `mfu_spec`);
and the hours of the paper's budget at a measured rate (`paper_budget_hours`).
"""

from __future__ import annotations

import os
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from benchmark.checkpoint import checkpoints_written
from benchmark.cost import synchronize
from benchmark.precision import effective, set_matmul_precision

# the paper's budget: 300 epochs of the 4,998 PASCAL-Context training images, each epoch
# followed by an evaluation of the 5,105 validation images
PAPER_EPOCHS = 300
PAPER_BUDGET_IMAGES = PAPER_EPOCHS * 4_998
PAPER_VAL_IMAGES = 5_105
# datasheet dense peaks (FLOP/s) by device name and precision: H100 and H200 SXM
SPEC_SHEET_PEAKS = {
    ("H100", "bf16"): 989e12, ("H100", "fp16"): 989e12, ("H100", "fp32"): 67e12,
    ("H200", "bf16"): 989e12, ("H200", "fp16"): 989e12, ("H200", "fp32"): 67e12,
}


def spec_peak(device_name: str, precision: str) -> float | None:
    """The datasheet's dense peak of an H100/H200 SXM in `precision`; None for other
    devices (PCIe H100s have a lower one and are not in the table)."""
    name = device_name.upper()
    if "PCIE" in name:
        return None
    for (model, p), peak in SPEC_SHEET_PEAKS.items():
        if model in name and p == precision:
            return peak
    return None


def matmul_rate(
    device: torch.device, precision: str = "bf16", min_seconds: float | None = None
) -> tuple[float, str, float]:
    """Measured FLOP/s of a large square matrix multiply in `precision` (float32 on a CPU),
    its dtype's name, and the seconds it was timed: after a warm-up, whole rounds until at
    least `min_seconds` (1 s on CUDA) have passed."""
    precision = effective(device, precision)
    set_matmul_precision(device, precision)
    if device.type == "cuda":
        n = 8192
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        min_seconds = 1.0 if min_seconds is None else min_seconds
    else:
        n, dtype = 1024, torch.float32
        min_seconds = 0.25 if min_seconds is None else min_seconds
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    calls, start = 0, time.perf_counter()
    while True:
        for _ in range(10 if device.type == "cuda" else 1):
            a @ b
            calls += 1
        synchronize(device)
        seconds = time.perf_counter() - start
        if seconds >= min_seconds:
            break
    name = str(dtype).replace("torch.", "")
    if dtype == torch.float32 and device.type == "cuda":
        name += " (TF32 off)"
    return 2 * n**3 * calls / seconds, name, seconds


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding,
                         _dilation, transposed, _output_padding, _groups, output_mask,
                         out_shape=None, **_) -> int:
    """A convolution's backward: the input gradient and the weight gradient each cost what
    the forward costs (the weight's shape already holds the grouping). PyTorch's own
    formula ignores `groups` here and counts a depthwise convolution's backward as if it
    were dense (65x the forward at 64 groups), which inflated TADFormer's per-sample
    depthwise filters (grouped per sample) to tens of GFLOP per image at 64 px."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn) -> int:
    """The FLOPs of calling `fn` once, by PyTorch's counter with the grouped convolutions'
    backward counted as `_conv_backward_flops` does."""
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


def checkpoint_seconds(model, optimizer) -> float:
    """Seconds to write this model's checkpoint (model and optimiser state, fsynced) to a
    temporary file: the per-epoch checkpoint cost of `paper_budget_hours`."""
    blob = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with open(os.path.join(tmp, "checkpoint.pt"), "wb") as f:
            torch.save(blob, f)
            f.flush()
            os.fsync(f.fileno())
        return time.perf_counter() - start


def paper_budget_hours(train_ips: float, infer_ips: float, checkpoint_s: float) -> float:
    """Hours of the paper's budget: training, one evaluation per epoch, and the checkpoints
    the training loop writes at its default cadence (`checkpoint.checkpoints_written`)."""
    train_s = PAPER_BUDGET_IMAGES / train_ips
    checkpoints = checkpoints_written(train_s, PAPER_EPOCHS)
    seconds = train_s + PAPER_EPOCHS * PAPER_VAL_IMAGES / infer_ips + checkpoints * checkpoint_s
    return seconds / 3600
