"""benchmark.perf writes well-formed rows; it measures, the tests only check its contract."""

import json

import pytest
import torch

from benchmark.checkpoint import checkpoints_written
from tests.helpers import run_cli

CPU = torch.device("cpu")


def test_perf_rows_have_the_contract_fields_and_consistent_flops(tmp_path):
    proc = run_cli(
        "benchmark.perf", "method=full_ft,decoders_only", "steps=1", "warmup=0", "format=json",
        f"results_dir={tmp_path / 'results'}", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {r["method"]: r for r in map(json.loads, proc.stdout.splitlines())}
    stored = (tmp_path / "results" / "perf" / "perf.jsonl").read_text().splitlines()
    assert len(stored) == 2
    for row in map(json.loads, stored):
        for key in ("method", "device", "train_images_per_second", "peak_memory_mb", "mfu",
                    "harness_vs_bare", "train_flops_per_image", "inference_images_per_second"):
            assert key in row, key
        assert row["train_images_per_second"] > 0 and row["mfu"] > 0
        assert row["harness_vs_bare"] > 0 and row["harness_vs_minimal"] > 0
        assert row["precision"] == "fp32" and row["compiled"] is None  # a CPU, eager
        # the paper's budget, 300 epochs of 4,998 images, each followed by an evaluation of
        # 5,105 images, and a checkpoint per 10 minutes of training plus the last, at the
        # row's rates
        assert row["checkpoint_seconds"] > 0
        train_s = 300 * 4998 / row["train_images_per_second"]
        hours = (train_s + 300 * 5105 / row["inference_images_per_second"]
                 + checkpoints_written(train_s, 300) * row["checkpoint_seconds"]) / 3600
        assert abs(row["paper_budget_hours"] - hours) < 1e-9 * hours
        assert hours > 300 * 4998 / row["train_images_per_second"] / 3600
    # a frozen backbone needs no weight gradients: fewer training FLOPs, same forward FLOPs
    full, frozen = rows["full_ft"], rows["decoders_only"]
    assert frozen["train_flops_per_image"] < full["train_flops_per_image"]
    assert frozen["forward_flops_per_image"] == full["forward_flops_per_image"]
    page = (tmp_path / "reports" / "perf.md").read_text()
    assert "decoders_only" in page and "paper budget h" in page


def test_the_matmul_rate_is_timed_for_at_least_the_minimum_time():
    from benchmark.speed import matmul_rate

    rate, dtype, seconds = matmul_rate(CPU, "bf16", min_seconds=0.3)
    assert seconds >= 0.3 and dtype == "float32" and rate > 0  # a CPU computes in fp32


def test_spec_peaks_of_h100_and_h200_sxm():
    from benchmark.speed import spec_peak

    assert spec_peak("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert spec_peak("NVIDIA H200", "bf16") == 989e12
    assert spec_peak("NVIDIA H200", "fp32") == 67e12
    assert spec_peak("NVIDIA H100 PCIe", "bf16") is None
    assert spec_peak("cpu (2 threads)", "fp32") is None


def test_the_report_prints_slow_rates_with_significant_figures(tmp_path):
    from benchmark.perf_report import write_report

    row = {"date": "2025-01-01", "run": "r", "device": "cpu", "backbone": "swin_tiny",
           "image_size": 448, "batch_size": 32, "matmul_tflops": 0.1, "matmul_dtype": "float32",
           "bare_images_per_second": 0.0432, "torch": "2", "command": "c", "label": "Full FT",
           "train_images_per_second": 0.0345, "inference_images_per_second": 0.25,
           "peak_memory_mb": None, "train_flops_per_image": 1e9, "mfu": 0.1}
    write_report([row], tmp_path / "perf.md")
    page = (tmp_path / "perf.md").read_text()
    assert "bare timm Swin: 0.0432 images/s" in page and "| 0.0345 " in page


def test_perf_timing_path_on_a_stubbed_gpu(tmp_path, monkeypatch, capsys):
    """perf's CUDA branches (placement, prefetch, autocast, spec-peak MFU) on the stub."""
    from benchmark import perf
    from tests.cuda_stub import FakeCuda

    cuda = FakeCuda(monkeypatch)
    monkeypatch.setattr(perf, "matmul_rate", lambda device, precision: (1e12, "bfloat16", 1.0))
    monkeypatch.chdir(tmp_path)
    code = perf.main(["method=decoders_only", "steps=2", "warmup=1", "format=json",
                      "budget=smoke", "budget.batch_size=2", f"results_dir={tmp_path}"])
    assert code == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["device"] == "NVIDIA H100 80GB HBM3" and row["precision"] == "bf16"
    assert row["spec_peak_tflops"] == 989
    assert row["mfu_spec"] == pytest.approx(row["mfu"] * 1e12 / 989e12)
    assert ("cuda", torch.bfloat16, True) in cuda.autocasts
    assert cuda.set_devices == [0] * len(cuda.set_devices) and cuda.set_devices


def test_perf_rejects_an_unknown_format(tmp_path):
    proc = run_cli("benchmark.perf", "format=xml", cwd=tmp_path)
    assert proc.returncode == 2 and "format" in proc.stderr


def test_a_failing_method_is_named_and_the_rows_measured_are_kept(tmp_path, monkeypatch, capsys):
    from benchmark import perf

    real = perf.measure

    def measure(cfg, *args):
        if cfg.method.name == "bitfit":
            raise RuntimeError("boom\nsecond line")
        return real(cfg, *args)

    monkeypatch.setattr(perf, "measure", measure)
    monkeypatch.chdir(tmp_path)
    code = perf.main([
        "method=bitfit,full_ft", "steps=1", "warmup=0", "progress=false",
        f"results_dir={tmp_path / 'results'}", f"output_dir={tmp_path / 'pages'}",
    ])
    assert code == 1
    assert "1 methods failed: bitfit: RuntimeError: boom" in capsys.readouterr().err
    stored = (tmp_path / "results" / "perf" / "perf.jsonl").read_text().splitlines()
    assert [json.loads(line)["method"] for line in stored] == ["full_ft"]
    assert "full_ft" in (tmp_path / "pages" / "perf.md").read_text()
    assert not (tmp_path / "reports").exists()


def _every_method() -> list[str]:
    from benchmark.config import choices

    return [m for m in choices("method") if m != "custom"]


@pytest.mark.parametrize("name", _every_method())
def test_flops_of_every_method_are_counted_in_training_and_inference(name):
    """PyTorch's FLOP counter walks every module (a parameter view made under no_grad once
    broke it); training costs more than the forward pass alone."""
    from benchmark.config import compose_all, instantiate_method
    from benchmark.data import dataset_info
    from benchmark.losses import MultiTaskLoss
    from benchmark.model import build_model
    from benchmark.perf import _forward_fn, _step_fn, fake_batch
    from benchmark.speed import count_flops as _flops

    torch.set_num_threads(1)
    (cfg,) = compose_all([[f"method={name}", "budget=smoke", "budget.batch_size=2"]])
    info = dataset_info(cfg.dataset)
    method = instantiate_method(cfg.method)
    tasks = method.task_groups(info.tasks)[0]
    model = build_model(method, cfg.backbone, info, tasks, drop_path=cfg.budget.drop_path,
                        load_weights=False)
    batch = fake_batch(info, 2, CPU)
    params = [p for p in model.parameters() if p.requires_grad]
    step = _step_fn(model, batch, MultiTaskLoss(tasks), torch.optim.AdamW(params),
                    CPU, False)
    forward = _flops(_forward_fn(model.eval(), batch["image"], CPU, False))
    assert 0 < forward < _flops(step)


def test_the_checkpoints_of_the_default_cadence_are_counted_as_the_loop_writes_them():
    # 300 epochs of 10 s: after epochs 60, 120, ..., 300 (the last is also a period's end)
    assert checkpoints_written(3000.0, 300) == 5
    # shorter than one period: the last epoch's only
    assert checkpoints_written(100.0, 300) == 1
    # epochs longer than the period: every epoch
    assert checkpoints_written(6000.0, 3) == 3
    # 7 epochs of 100 s: after epoch 6 (600 s) and after the last
    assert checkpoints_written(700.0, 7) == 2


def test_a_grouped_convolution_backward_costs_twice_its_forward():
    from benchmark.speed import count_flops as _flops

    for groups in (1, 64):
        w = torch.randn(64, 64 // groups, 3, 3, requires_grad=True)
        x = torch.randn(2, 64, 16, 16, requires_grad=True)
        # forward: 2 * batch * out_channels * (in_channels / groups) * 3 * 3 * 16 * 16
        forward = 2 * 2 * 64 * (64 // groups) * 9 * 256
        assert _flops(lambda w=w, x=x, g=groups: torch.nn.functional.conv2d(
            x, w, padding=1, groups=g)) == forward
        total = _flops(lambda w=w, x=x, g=groups: torch.nn.functional.conv2d(
            x, w, padding=1, groups=g).sum().backward())
        assert total == 3 * forward  # forward, input gradient, weight gradient
