"""`benchmark.gpucheck`: the targets are judged from the measured rows, records are checked
for sanity, bad input is a one-line error, and the reduced CPU version runs end to end."""

from __future__ import annotations

import json
import math
import tarfile

import pytest

from benchmark import gpucheck
from tests.helpers import run_cli


def _row(method, compile=False, **values):
    base = {"method": method, "compile": compile, "fused_attn": False, "mfu_spec": None,
            "harness_vs_minimal": 0.97, "paper_budget_hours": 0.4,
            "train_images_per_second": 100.0}
    return {**base, **values}


def _record(**metrics):
    return {"status": "ok", "metrics": {"semseg": {"miou": 50.0, **metrics}},
            "final_loss": {"semseg": 1.0},
            "cost": {"train_images_per_second": 10.0, "device": "NVIDIA H100 80GB HBM3"}}


def test_targets_are_judged_from_the_rows():
    rows = [_row("full_ft", compile=True, mfu_spec=0.41, paper_budget_hours=0.3),
            _row("full_ft", mfu_spec=0.30, paper_budget_hours=0.45, harness_vs_minimal=0.90),
            _row("mtlora", paper_budget_hours=0.6), _row("single_task", paper_budget_hours=1.2),
            _row("decoders_only", paper_budget_hours=0.2)]
    records = {"train": {m: [] for m in gpucheck.TRAINED}, "torchrun": {"mtlora": []}}
    steps = {"train": {"status": 0}, "torchrun": {"status": 0},
             "tests": {"status": 0, "last_line": "10 passed"}}
    table = {name: (value, met) for name, value, met in
             gpucheck.targets(rows, steps, records, cuda=True)}
    by = {name.split(" ")[0] + name.split(" ")[3] if "paper" in name else name.split(" ")[0]:
          v for name, v in table.items()}
    assert by["full"] == (0.41, True)  # the compiled row's MFU against the spec peak
    assert by["harness"] == (0.90, False)  # the worst row
    assert by["paperfull_ft"] == (pytest.approx(18.0), True)  # minutes, the best row
    assert by["papermtlora"] == (pytest.approx(36.0), False)
    # single-task + full FT + decoders + 3 x MTLoRA, in hours
    assert by["MTLoRA"] == (pytest.approx(1.2 + 0.3 + 0.2 + 3 * 0.6), True)
    # without CUDA nothing is judged
    off = gpucheck.targets(rows, steps, records, cuda=False)
    assert [met for _, _, met in off[:5]] == [None] * 5
    # the trainings and torchrun ran and are judged; a step left out of `steps=` is not
    # measured rather than missed
    assert [met for _, _, met in gpucheck.targets(rows, steps, records, cuda=True)[5:]] == [
        True, True, True]
    partial = {k: v for k, v in steps.items() if k != "torchrun"}
    judged = gpucheck.targets(rows, partial, {"train": records["train"], "torchrun": {}}, True)
    assert [met for _, _, met in judged[5:]] == [True, None, True]


def test_a_record_with_a_non_finite_or_out_of_range_metric_is_not_sane():
    assert gpucheck.check_record(_record(), cuda=True) == []
    assert gpucheck.check_record(_record(miou=math.nan), cuda=True) == ["semseg.miou = nan"]
    assert gpucheck.check_record(_record(miou=-1.0), cuda=True) == ["semseg.miou = -1.0"]
    cpu = _record()
    cpu["cost"]["device"] = "cpu (2 threads)"
    assert gpucheck.check_record(cpu, cuda=True) == ["trained on cpu (2 threads)"]
    assert gpucheck.check_record({"status": "failed", "error": "boom"}, cuda=True) == [
        "status failed: boom"]


def test_bad_input_is_one_line_and_exit_status_2(tmp_path):
    proc = run_cli("benchmark.gpucheck", cwd=tmp_path)
    assert proc.returncode == 2 and "output_dir=DIR" in proc.stderr
    proc = run_cli("benchmark.gpucheck", f"output_dir={tmp_path}", "steps=perf,nope",
                   cwd=tmp_path)
    assert proc.returncode == 2 and "unknown steps nope" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_reduced_cpu_version_runs_end_to_end(tmp_path):
    out = tmp_path / "check"
    proc = run_cli("benchmark.gpucheck", f"output_dir={out}", "steps=perf,train,tests",
                   cwd=tmp_path)
    summary = (out / "summary.md").read_text()
    assert proc.returncode == 0, summary
    assert "no CUDA: the reduced CPU version ran" in summary
    data = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in data["steps"]] == ["perf", "train", "tests"]
    assert all(s["status"] == 0 for s in data["steps"])
    records = gpucheck.read_records(out / "results")
    assert {r["method"] for r in records} == set(gpucheck.TRAINED)
    assert all(r["status"] == "ok" for r in records)
    assert {r["method"] for r in gpucheck.perf_rows(out)} == {"full_ft", "mtlora"}
    with tarfile.open(out.with_name("check.tar.gz")) as tar:
        names = tar.getnames()
    assert "check/summary.md" in names and "check/logs/train.log" in names
