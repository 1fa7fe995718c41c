"""`python -m benchmark.perf [overrides] [format=json] [steps=N] [warmup=N] [output_dir=DIR]`:
speed per method.

For every method (or the `method=` given), on synthetic inputs of the configuration's shape
(image size of the dataset, `budget.batch_size`, the dataset's tasks): training images/s
(forward, backward and the AdamW step, bf16 autocast on CUDA), inference images/s, peak
memory, FLOPs per image (PyTorch's FLOP counter over one training step and one forward),
and the model FLOP utilisation (MFU) against the matrix-multiply rate that the same command
measures on the same device (bf16 on CUDA; float32 on a CPU, the dtype the CPU trains in).
The bare timm Swin of the same shape (forward, backward of its stage features, AdamW step)
is measured alongside, and `harness_vs_bare` = full fine-tuning throughput of the harness /
bare throughput: the cost of the decoders and of the harness itself.

    python -m benchmark.perf                                   # CPU: the default small shape
    python -m benchmark.perf backbone=swin_tiny dataset=pascal_context budget=paper  # paper shape

Each row also carries `paper_budget_hours`: the hours that the paper's budget (300 epochs of
PASCAL-Context's 4,998 training images) takes at the row's training rate, evaluation left out.
It is an estimate for the paper's recipe only at the paper's shape (the second command).

Rows are printed as a table (or JSON lines with `format=json`) and appended to
`results_dir/perf/perf.jsonl` as each method is measured (full fine-tuning first, so that
every row carries `harness_vs_bare`); `output_dir/perf.md` (default `reports/perf.md`) is
rewritten from that file. A method that fails (out of memory, say) is named in one line and
the others go on; the exit status is then 1.
Performance figures come from this command, never from timed tests.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from tabulate import tabulate
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from benchmark.cost import PeakMemory, device_name
from benchmark.errors import UserError, first_line, report_user_error
from benchmark.losses import MultiTaskLoss
from benchmark.run import compose_all, expand, pop_options
from benchmark.tasks import IGNORE_INDEX
from benchmark.train import autocast, param_groups, resolve_device

# the paper's budget: 300 epochs of the 4,998 PASCAL-Context training images
PAPER_BUDGET_IMAGES = 300 * 4_998


def fake_batch(info, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random inputs and labels in the formats of `benchmark.tasks` (speed does not depend
    on their values)."""
    g = torch.Generator().manual_seed(0)
    size = info.image_size
    batch = {"image": torch.randn(batch_size, 3, size, size, generator=g)}
    for task, n in info.num_outputs.items():
        if task in ("semseg", "human_parts"):
            label = torch.randint(0, n, (batch_size, size, size), generator=g)
            label[:, :2] = IGNORE_INDEX
        elif task in ("sal", "edge"):
            label = torch.randint(0, 2, (batch_size, size, size), generator=g)
        elif task == "normals":
            label = torch.nn.functional.normalize(torch.randn(batch_size, 3, size, size), dim=1)
        else:  # depth
            label = torch.rand(batch_size, 1, size, size, generator=g) + 0.5
        batch[task] = label
    return {k: v.to(device) for k, v in batch.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, steps: int, warmup: int) -> float:
    """Seconds per call of `fn`, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def matmul_rate(device: torch.device) -> tuple[float, str]:
    """Measured FLOP/s of a large square matrix multiply, and its dtype."""
    if device.type == "cuda":
        n, dtype = 8192, torch.bfloat16
    else:
        n, dtype = 1024, torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = _timed(lambda: a @ b, device, steps=20 if device.type == "cuda" else 5, warmup=3)
    return 2 * n**3 / seconds, str(dtype).replace("torch.", "")


def _step_fn(model, batch, criterion, optimizer, device, amp: bool):
    def step():
        with autocast(device, amp):
            outputs = model(batch["image"])
        loss, _ = criterion(outputs, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _forward_fn(model, images, device, amp: bool):
    def forward():
        with torch.no_grad(), autocast(device, amp):
            model(images)

    return forward


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure(cfg: DictConfig, steps: int, warmup: int, rate: float) -> dict:
    from benchmark.data import dataset_info
    from benchmark.model import build_model, count_parameters
    from methods.base import instantiate_method

    device = resolve_device(cfg.device)
    method = instantiate_method(cfg.method)
    info = dataset_info(cfg.dataset)
    batch_size = cfg.budget.batch_size
    batch = fake_batch(info, batch_size, device)
    amp = bool(cfg.budget.amp)
    torch.manual_seed(cfg.seed)
    # single_task trains one model per task: its cost is the sum over those models
    groups = method.task_groups(info.tasks)
    train_s = infer_s = 0.0
    train_flops = forward_flops = 0
    peak = None
    trainable = 0
    kind = "cuda_allocated" if device.type == "cuda" else "cpu_rss_increase"
    for tasks in groups:
        model = build_model(method, cfg, info, tasks, load_weights=False).to(device)
        sub = {k: v for k, v in batch.items() if k == "image" or k in tasks}
        if cfg.channels_last:  # as the trainer does (benchmark.train)
            model.to(memory_format=torch.channels_last)
            sub["image"] = sub["image"].contiguous(memory_format=torch.channels_last)
        trainable += count_parameters(model, trainable_only=True)
        optimizer = torch.optim.AdamW(
            param_groups(model, cfg.budget.weight_decay), lr=1e-4,
            fused=device.type == "cuda",
        )
        criterion = MultiTaskLoss(tasks)
        # FLOPs are counted on the eager model: compiled kernels escape the counter
        runner = torch.compile(model) if cfg.compile else model
        model.train()
        train_flops += _flops(_step_fn(model, sub, criterion, optimizer, device, amp))
        step = _step_fn(runner, sub, criterion, optimizer, device, amp)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        with PeakMemory(device) as memory:
            train_s += _timed(step, device, steps, warmup)
        peak = max(peak or 0.0, memory.mb or 0.0)
        model.eval()
        forward_flops += _flops(_forward_fn(model, sub["image"], device, amp))
        forward = _forward_fn(runner, sub["image"], device, amp)
        infer_s += _timed(forward, device, steps, warmup)
        del model, runner, optimizer, forward, step
    train_ips = batch_size / train_s
    return {
        "method": method.name,
        "label": method.label,
        "device": device_name(device),
        "backbone": cfg.backbone.name,
        "dataset": info.name,
        "tasks": info.tasks,
        "image_size": info.image_size,
        "batch_size": batch_size,
        "amp": amp and device.type == "cuda",
        "compile": bool(cfg.compile),
        "channels_last": bool(cfg.channels_last),
        "trainable": trainable,
        "train_images_per_second": train_ips,
        "inference_images_per_second": batch_size / infer_s,
        "peak_memory_mb": peak,
        "memory_kind": kind,
        "train_flops_per_image": train_flops / batch_size,
        "forward_flops_per_image": forward_flops / batch_size,
        "mfu": train_flops / batch_size * train_ips / rate,
    }


def measure_bare(cfg: DictConfig, steps: int, warmup: int) -> float:
    """Training images/s of the bare timm Swin at the same shape (forward, backward of the
    sum of its stage features, AdamW step)."""
    from benchmark.backbone import build_swin
    from benchmark.data import dataset_info

    device = resolve_device(cfg.device)
    info = dataset_info(cfg.dataset)
    swin = build_swin(cfg.backbone, info.image_size, cfg.budget.drop_path).to(device).train()
    optimizer = torch.optim.AdamW(swin.parameters(), lr=1e-4, fused=device.type == "cuda")
    images = fake_batch(info, cfg.budget.batch_size, device)["image"]
    amp = bool(cfg.budget.amp)

    def step():
        with autocast(device, amp):
            x = swin.patch_embed(images)
            loss = 0.0
            for layer in swin.layers:
                x = layer(x)
                loss = loss + x.float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return cfg.budget.batch_size / _timed(step, device, steps, warmup)


def _hours(row: dict) -> str:
    """The paper budget's hours at the row's rate (rows older than the column: computed)."""
    hours = row.get("paper_budget_hours")
    if hours is None:
        hours = PAPER_BUDGET_IMAGES / row["train_images_per_second"] / 3600
    return f"{hours:.2f}" if hours < 10 else f"{hours:.0f}"


def write_report(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Speed",
        "",
        "Generated by `python -m benchmark.perf` from `results/perf/perf.jsonl` (synthetic",
        "inputs; training = forward, backward and AdamW step). MFU is measured against the",
        "matrix-multiply rate that the same command measured on the same device.",
        "`paper budget h`: hours of training for the paper's budget (300 epochs of 4,998",
        "images) at the row's rate; an estimate of the paper's cost only at its shape",
        "(Swin-T, 448x448, batch 32).",
        "",
    ]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:  # one section per invocation, the latest first
        key = (row.get("run", row["date"]), row["device"], row["backbone"], row["image_size"],
               row["batch_size"], row["date"])
        groups.setdefault(key, []).append(row)
    for (_, device, backbone, size, batch, date), group in sorted(
        groups.items(), key=lambda item: item[0][0], reverse=True
    ):
        first = group[0]
        lines += [
            f"## {device} · {backbone} · {size}x{size} · batch {batch} · {date}",
            "",
            f"Matrix-multiply rate: {first['matmul_tflops']:.2f} TFLOP/s "
            f"({first['matmul_dtype']}); "
            f"bare timm Swin: {first['bare_images_per_second']:.1f} images/s; "
            f"torch {first['torch']}; command: `{first['command']}`.",
            "",
        ]
        table = [
            [
                r["label"], f"{r['train_images_per_second']:.1f}",
                f"{r['inference_images_per_second']:.1f}",
                "–" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}",
                f"{r['train_flops_per_image'] / 1e9:.2f}", f"{r['mfu']:.3f}",
                "–" if r.get("harness_vs_bare") is None else f"{r['harness_vs_bare']:.2f}",
                _hours(r),
            ]
            for r in sorted(group, key=lambda r: -r["train_images_per_second"])
        ]
        headers = ["method", "train img/s", "infer img/s", "peak MB", "train GFLOP/img", "MFU",
                   "harness/bare", "paper budget h"]
        lines += [tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), ""]
    path.write_text("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options, rest = pop_options(
        argv, {"format": "table", "steps": None, "warmup": None, "output_dir": "reports"}
    )
    try:
        if options["format"] not in ("table", "json"):
            raise UserError(f"unknown format {options['format']!r}; choose from table, json")
        configs = compose_all(expand(rest, default_sweep="full", listing=True))
        device = resolve_device(configs[0].device)
        steps = int(options["steps"] or (20 if device.type == "cuda" else 3))
        warmup = int(options["warmup"] or (5 if device.type == "cuda" else 1))
        if steps < 1 or warmup < 0:
            raise UserError("steps must be >= 1 and warmup >= 0")
    except ValueError as err:
        return report_user_error(UserError(f"invalid number: {err}"))
    except UserError as err:
        return report_user_error(err)
    rate, dtype = matmul_rate(device)
    bare = measure_bare(configs[0], steps, warmup)
    rows = []
    stamp = {
        "date": datetime.date.today().isoformat(),
        "run": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "command": "python -m benchmark.perf " + " ".join(argv),
        "matmul_tflops": rate / 1e12,
        "matmul_dtype": dtype,
        "bare_images_per_second": bare,
    }
    perf_file = Path(configs[0].results_dir) / "perf" / "perf.jsonl"
    perf_file.parent.mkdir(parents=True, exist_ok=True)
    # full fine-tuning first: its rate is every row's harness_vs_bare
    configs = sorted(configs, key=lambda c: c.method.name != "full_ft")
    full_rate = None
    failures = []
    for cfg in tqdm(configs, desc="perf", unit="method", disable=len(configs) == 1):
        try:
            row = {**measure(cfg, steps, warmup, rate), **stamp}
        except Exception as err:  # noqa: BLE001 (one method's failure: the others go on)
            if isinstance(err, torch.cuda.OutOfMemoryError):
                err = RuntimeError(f"out of memory at budget.batch_size={cfg.budget.batch_size}")
            failures.append(f"{cfg.method.name}: {type(err).__name__}: {first_line(err)}")
            tqdm.write(f"FAILED {failures[-1]}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        if row["method"] == "full_ft":
            full_rate = row["train_images_per_second"]
        row["harness_vs_bare"] = None if full_rate is None else full_rate / bare
        row["paper_budget_hours"] = PAPER_BUDGET_IMAGES / row["train_images_per_second"] / 3600
        rows.append(row)
        with perf_file.open("a") as f:  # row by row: a crash keeps what was measured
            f.write(json.dumps(row) + "\n")
        if options["format"] == "json":
            print(json.dumps(row))
    report_file = Path(options["output_dir"]) / "perf.md"
    history = [json.loads(line) for line in perf_file.read_text().splitlines() if line.strip()]
    write_report(history, report_file)
    if options["format"] == "table" and rows:
        table = [
            [r["label"], f"{r['train_images_per_second']:.1f}",
             f"{r['inference_images_per_second']:.1f}",
             "–" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}",
             f"{r['train_flops_per_image'] / 1e9:.3f}", f"{r['mfu']:.3f}"]
            for r in rows
        ]
        print(f"{rows[0]['device']}: matmul {rate / 1e12:.2f} TFLOP/s ({dtype}); "
              f"bare Swin {bare:.1f} images/s; harness_vs_bare "
              + ("–" if full_rate is None else f"{rows[0]['harness_vs_bare']:.2f}"))
        print(tabulate(table, headers=["method", "train img/s", "infer img/s", "peak MB",
                                       "train GFLOP/img", "MFU"]))
    print(f"appended {len(rows)} rows to {perf_file}; wrote {report_file}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} methods failed: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
