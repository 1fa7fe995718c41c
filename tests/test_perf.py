"""benchmark.perf writes well-formed rows; it measures, the tests only check its contract."""

import json

from tests.conftest import run_cli


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
        assert row["harness_vs_bare"] > 0
        # the paper's budget, 300 epochs of 4,998 images, at the row's rate
        hours = 300 * 4998 / row["train_images_per_second"] / 3600
        assert abs(row["paper_budget_hours"] - hours) < 1e-9 * hours
    # a frozen backbone needs no weight gradients: fewer training FLOPs, same forward FLOPs
    full, frozen = rows["full_ft"], rows["decoders_only"]
    assert frozen["train_flops_per_image"] < full["train_flops_per_image"]
    assert frozen["forward_flops_per_image"] == full["forward_flops_per_image"]
    page = (tmp_path / "reports" / "perf.md").read_text()
    assert "decoders_only" in page and "paper budget h" in page


def test_perf_rejects_an_unknown_format(tmp_path):
    proc = run_cli("benchmark.perf", "format=xml", cwd=tmp_path)
    assert proc.returncode == 2 and "format" in proc.stderr
