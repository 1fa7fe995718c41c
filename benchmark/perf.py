"""`python -m benchmark.perf [overrides] [format=json] [steps=N] [warmup=N] [output_dir=DIR]`:
speed per method.

For every method (or the `method=` given), on synthetic inputs of the configuration's shape
(image size of the dataset, `budget.batch_size`, the dataset's tasks), in the configuration's
settings (`budget.precision`, `compile`, `channels_last`, `fused_attn`):

- `train_images_per_second`: the harness, measured with the very step the training loop
  runs (`benchmark.train.TrainStep`: learning rate, autocast, loss, backward, clipping,
  AdamW) on batches from its data pipeline (`BatchLoader`, split placed as training places
  it, augmentation included);
- `minimal_images_per_second`: a minimal loop over the same model in the same settings
  (forward, loss, backward, clipping, AdamW on one batch already on the device), and
  `harness_vs_minimal`, the harness's rate over it: the harness's overhead (target >= 0.95);
- inference images/s, peak memory, FLOPs per image (PyTorch's FLOP counter over one
  training step and one forward of the eager model);
- `mfu`: model FLOP utilisation against the matrix-multiply rate the same command measures
  on the same device in the same precision (timed for at least a second on CUDA after a
  warm-up), and `mfu_spec` against the device's datasheet peak where known (H100/H200 SXM:
  989 dense bf16/fp16 TFLOP/s, 67 fp32); fp32 on CUDA sets full float32 matrix multiplies
  (TF32 off) and says so;
- `harness_vs_bare`: full fine-tuning's harness rate over a bare timm Swin of the same shape
  and settings (forward, backward of its stage features, AdamW). The decoders are part of
  the model, not overhead: at Swin-T 448 they are 18 % of full FT's forward FLOPs, so this
  ratio is at most about 0.82 by FLOPs alone;
- `paper_budget_hours`: the hours of the paper's budget (300 epochs of PASCAL-Context's
  4,998 training images) at the row's rate, with one evaluation of the 5,105 validation
  images per epoch at the inference rate and the checkpoints of the default cadence (one per
  10 minutes of training, plus the last epoch's) at the measured time of writing this
  model's checkpoint (model and optimiser state, fsynced). It is an
  estimate of the paper's cost only at the paper's shape (the second command below).

    python -m benchmark.perf                                   # CPU: the default small shape
    python -m benchmark.perf backbone=swin_tiny dataset=pascal_context budget=paper  # paper shape

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
from tqdm.auto import tqdm

from benchmark.config import compose_all, expand, instantiate_method, pop_options
from benchmark.config.parts import parse
from benchmark.cost import PeakMemory, device_name, synchronize
from benchmark.data import Split
from benchmark.distributed import resolve_device
from benchmark.errors import UserError, first_line, report_user_error
from benchmark.losses import MultiTaskLoss
from benchmark.perf_report import fmt_rate, fmt_ratio, write_report
from benchmark.precision import autocast, effective, training_precision
from benchmark.speed import (
    checkpoint_seconds,
    count_flops,
    matmul_rate,
    paper_budget_hours,
    spec_peak,
)
from benchmark.tasks import IGNORE_INDEX
from benchmark.train import TrainStep, compile_module, param_groups, set_fused_attention


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


def _timed(fn, device: torch.device, steps: int, warmup: int) -> float:
    """Seconds per call of `fn`, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def _step_fn(model, batch, criterion, optimizer, device, precision, clip: float | None = None):
    """The minimal loop's step: forward, loss, backward, clipping, AdamW (the arithmetic of
    the training step, without the harness around it). `precision` may be the old bool."""
    if isinstance(precision, bool):
        precision = "bf16" if precision else "fp32"
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def step():
        with autocast(device, precision):
            outputs = model(batch["image"])
        loss, _ = criterion(outputs, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()

    return step


def _forward_fn(model, images, device, precision):
    if isinstance(precision, bool):
        precision = "bf16" if precision else "fp32"

    def forward():
        with torch.no_grad(), autocast(device, precision):
            model(images)

    return forward


def fake_split(info, size: int) -> Split:
    """`size` random images and labels in the stored formats of a split at input size."""
    g = torch.Generator().manual_seed(1)
    s = info.image_size
    arrays = {"image": torch.randint(0, 256, (size, s, s, 3), dtype=torch.uint8, generator=g)}
    for task, n in info.num_outputs.items():
        if task in ("semseg", "human_parts", "sal", "edge"):
            arrays[task] = torch.randint(0, max(n, 2), (size, s, s), dtype=torch.uint8,
                                         generator=g)
        elif task == "normals":
            arrays[task] = torch.nn.functional.normalize(
                torch.randn(size, s, s, 3, generator=g), dim=-1).half()
        else:
            arrays[task] = torch.rand(size, s, s, generator=g) + 0.5
    return Split(arrays)


def _timed_loader(train_step, loader, device: torch.device, steps: int, warmup: int) -> float:
    """Seconds per training step of the harness: `train_step` on the loader's batches,
    epoch after epoch, after `warmup` steps."""

    def batches():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    stream = batches()
    for i in range(warmup):
        train_step(next(stream), i)
    synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        train_step(next(stream), warmup + i)
    synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    stream.close()
    return seconds


def measure(cfg: DictConfig, steps: int, warmup: int, rate: float, peak: float | None = None
            ) -> dict:
    from benchmark.data import BatchLoader, dataset_info, place_split
    from benchmark.model import build_model, count_parameters

    spec = parse(cfg)
    device = resolve_device(spec.device)
    method = instantiate_method(spec.method.node)
    info = dataset_info(spec.data)
    execution = spec.execution
    batch_size = spec.budget.batch_size
    batch = fake_batch(info, batch_size, device)
    precision = effective(device, training_precision(spec.budget.group))
    split = place_split(fake_split(info, 2 * batch_size), device, execution.data_on_gpu)
    torch.manual_seed(spec.seed)
    # single_task trains one model per task: its cost is the sum over those models
    groups = method.task_groups(info.tasks)
    train_s = minimal_s = infer_s = checkpoint_s = 0.0
    train_flops = forward_flops = 0
    peak_mb = None
    trainable = 0
    compiled = []
    kind = "cuda_allocated" if device.type == "cuda" else "cpu_rss_increase"
    for tasks in groups:
        model = build_model(method, spec.backbone, info, tasks,
                            drop_path=spec.budget.drop_path, load_weights=False).to(device)
        if execution.fused_attn:
            set_fused_attention(model, True)
        sub = {k: v for k, v in batch.items() if k == "image" or k in tasks}
        if execution.channels_last:  # as the trainer does (benchmark.train)
            model.to(memory_format=torch.channels_last)
            sub["image"] = sub["image"].contiguous(memory_format=torch.channels_last)
        trainable += count_parameters(model, trainable_only=True)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            param_groups(model, spec.budget.weight_decay), lr=1e-4,
            fused=device.type == "cuda",
        )
        criterion = MultiTaskLoss(tasks)
        # FLOPs are counted on the eager model: compiled kernels escape the counter
        model.train()
        train_flops += count_flops(_step_fn(model, sub, criterion, optimizer, device, precision,
                                       spec.budget.clip_grad))
        runner, probe = compile_module(model) if execution.compile else (model, None)
        loader = BatchLoader(split, tasks, batch_size, device, shuffle=True, augment=True,
                             drop_last=True, prefetch=execution.prefetch
                             if device.type == "cuda" else 0)
        harness = TrainStep(runner, criterion, optimizer, params, spec.budget, device,
                            execution, lambda _: 1e-4, precision)
        minimal = _step_fn(runner, sub, criterion, optimizer, device, precision,
                           spec.budget.clip_grad)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        with PeakMemory(device) as memory:
            train_s += _timed_loader(harness, loader, device, steps, warmup)
            minimal_s += _timed(minimal, device, steps, warmup)
        if probe is not None:
            compiled.append(probe.compiled)
        peak_mb = max(peak_mb or 0.0, memory.mb or 0.0)
        model.eval()
        forward_flops += count_flops(_forward_fn(model, sub["image"], device, precision))
        forward = _forward_fn(runner, sub["image"], device, precision)
        infer_s += _timed(forward, device, steps, warmup)
        checkpoint_s += checkpoint_seconds(model, optimizer)
        del model, runner, optimizer, forward, minimal, harness, loader
    train_ips = batch_size / train_s
    infer_ips = batch_size / infer_s
    flops_per_image = train_flops / batch_size
    return {
        "method": method.name,
        "label": method.label,
        "device": device_name(device),
        "backbone": spec.backbone.name,
        "dataset": info.name,
        "tasks": info.tasks,
        "image_size": info.image_size,
        "batch_size": batch_size,
        "precision": precision,
        "amp": precision != "fp32",  # the old column
        "compile": execution.compile,
        "compiled": all(compiled) if compiled else None,
        "channels_last": execution.channels_last,
        "fused_attn": execution.fused_attn,
        "trainable": trainable,
        "train_images_per_second": train_ips,
        "minimal_images_per_second": batch_size / minimal_s,
        "harness_vs_minimal": minimal_s / train_s,
        "inference_images_per_second": infer_ips,
        "checkpoint_seconds": checkpoint_s,
        "peak_memory_mb": peak_mb,
        "memory_kind": kind,
        "train_flops_per_image": flops_per_image,
        "forward_flops_per_image": forward_flops / batch_size,
        "mfu": flops_per_image * train_ips / rate,
        "mfu_spec": None if peak is None else flops_per_image * train_ips / peak,
        "paper_budget_hours": paper_budget_hours(train_ips, infer_ips, checkpoint_s),
    }


def measure_bare(cfg: DictConfig, steps: int, warmup: int) -> float:
    """Training images/s of the bare timm Swin at the configuration's shape and settings
    (precision, compile, channels_last, fused attention): forward, backward of the sum of
    its stage features, AdamW step."""
    from benchmark.backbone import build_swin
    from benchmark.data import dataset_info

    spec = parse(cfg)
    device = resolve_device(spec.device)
    info = dataset_info(spec.data)
    execution = spec.execution
    swin = build_swin(spec.backbone, info.image_size, spec.budget.drop_path).to(device).train()
    if execution.fused_attn:
        set_fused_attention(swin, True)
    optimizer = torch.optim.AdamW(swin.parameters(), lr=1e-4, fused=device.type == "cuda")
    images = fake_batch(info, spec.budget.batch_size, device)["image"]
    if execution.channels_last:
        swin.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    precision = effective(device, training_precision(spec.budget.group))

    class Stages(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.swin = swin

        def forward(self, x):
            x = self.swin.patch_embed(x)
            loss = 0.0
            for layer in self.swin.layers:
                x = layer(x)
                loss = loss + x.float().mean()
            return loss

    runner = compile_module(Stages())[0] if execution.compile else Stages()

    def step():
        with autocast(device, precision):
            loss = runner(images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return spec.budget.batch_size / _timed(step, device, steps, warmup)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options, rest = pop_options(
        argv, {"format": "table", "steps": None, "warmup": None, "output_dir": "reports"},
        __doc__,
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
    precision = effective(device, training_precision(configs[0].budget))
    rate, dtype, matmul_s = matmul_rate(device, precision)
    peak = spec_peak(device_name(device), precision)
    bares: dict[tuple, float] = {}  # by shape and settings
    rows = []
    stamp = {
        "date": datetime.date.today().isoformat(),
        "run": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "command": "python -m benchmark.perf " + " ".join(argv),
        "matmul_tflops": rate / 1e12,
        "matmul_dtype": dtype,
        "matmul_seconds": matmul_s,
        "spec_peak_tflops": None if peak is None else peak / 1e12,
    }
    perf_file = Path(configs[0].results_dir) / "perf" / "perf.jsonl"
    perf_file.parent.mkdir(parents=True, exist_ok=True)
    # full fine-tuning first: its rate is every row's harness_vs_bare
    configs = sorted(configs, key=lambda c: c.method.name != "full_ft")
    full_rate = None
    failures = []
    for cfg in tqdm(configs, desc="perf", unit="method", disable=len(configs) == 1):
        shape = (cfg.backbone.name, cfg.dataset.name, cfg.budget.batch_size, cfg.compile,
                 cfg.channels_last, cfg.get("fused_attn", False))
        try:
            if shape not in bares:
                bares[shape] = measure_bare(cfg, steps, warmup)
            bare = bares[shape]
            row = {**measure(cfg, steps, warmup, rate, peak), **stamp,
                   "bare_images_per_second": bare}
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
            [r["label"], fmt_rate(r["train_images_per_second"]),
             fmt_rate(r["inference_images_per_second"]),
             "–" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}",
             f"{r['train_flops_per_image'] / 1e9:.3f}", f"{r['mfu']:.3f}",
             fmt_ratio(r, "harness_vs_minimal")]
            for r in rows
        ]
        print(f"{rows[0]['device']}: matmul {rate / 1e12:.2f} TFLOP/s ({dtype}); "
              f"bare Swin {fmt_rate(rows[0]['bare_images_per_second'])} images/s; "
              "harness_vs_bare " + fmt_ratio(rows[0], "harness_vs_bare"))
        print(tabulate(table, headers=["method", "train img/s", "infer img/s", "peak MB",
                                       "train GFLOP/img", "MFU", "harness/minimal"]))
    print(f"appended {len(rows)} rows to {perf_file}; wrote {report_file}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} methods failed: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
