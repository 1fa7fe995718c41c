"""Comparison groups: Δm recomputed from records and matched by seed, seeds aggregated,
failed runs as failed rows, groups split by resolution and by a swept value."""

import math

import pytest

from benchmark.report.groups import build_groups
from tests.report.builders import (
    build,
    failed_record,
    make_record,
    published_records,
    read_csv,
    swept_records,
    write,
)


def test_seeds_are_aggregated_and_delta_m_matched_by_seed(tmp_path):
    results = tmp_path / "results"
    for seed, semseg in [(0, 60.0), (1, 70.0)]:
        write(results, make_record("single task", "single_task", (semseg, 50, 50, 20), seed))
    # +10 % semseg against the reference of the same seed in both seeds: Δm 2.5 exactly;
    # against the mean reference (65) it would be 0.38 and 4.62
    for seed, semseg in [(0, 66.0), (1, 77.0)]:
        write(results, make_record("lora r=8", "lora", (semseg, 50, 50, 20), seed,
                                   seconds=100 + 20 * seed))
    # a seed without a reference is scored against the mean of the references
    write(results, make_record("bitfit", "bitfit", (71.5, 50, 50, 20), seed=2))
    (page,) = build(results, tmp_path / "reports")
    rows = read_csv(tmp_path / "reports")

    lora = rows["lora r=8"]
    assert lora["n_seeds"] == "2" and lora["seeds"] == "0 1"
    assert float(lora["delta_m"]) == pytest.approx(2.5)
    assert float(lora["delta_m_std"]) == pytest.approx(0.0, abs=1e-9)
    assert lora["delta_m_reference"] == "seed"
    assert float(lora["semseg.miou"]) == pytest.approx(71.5)
    assert float(lora["semseg.miou_std"]) == pytest.approx(math.sqrt(60.5), abs=1e-3)
    assert float(lora["train_seconds"]) == pytest.approx(110.0)
    assert float(lora["train_seconds_std"]) == pytest.approx(math.sqrt(200), abs=1e-3)
    assert float(lora["semseg.change"]) == pytest.approx(10.0)

    bitfit = rows["bitfit"]
    assert bitfit["delta_m_reference"] == "mean"
    assert float(bitfit["delta_m"]) == pytest.approx(100 / 4 * (71.5 - 65) / 65)
    text = page.read_text()
    assert "| lora r=8 " in text and "+2.50 ± 0.00" in text
    assert "bitfit: no single-task reference for seed 2" in text


def test_failed_runs_are_failed_rows_with_their_error(tmp_path):
    results = tmp_path / "results"
    published_records(results)
    write(results, failed_record("polyhistor", error="RuntimeError: CUDA out of memory | 2 GiB"))
    # a failure that a later run of the same configuration superseded is not a failed row
    write(results, failed_record("full_ft"), name="full_ft-old-failure")
    (page,) = build(results, tmp_path / "reports")
    rows = read_csv(tmp_path / "reports")
    assert rows["polyhistor"]["status"] == "failed" and rows["polyhistor"]["n_seeds"] == "0"
    assert "CUDA out of memory | 2 GiB" in rows["polyhistor"]["error"]
    assert rows["full_ft"]["status"] == "ok"
    text = page.read_text()
    assert "| polyhistor (failed, seed 0) " in text
    assert "RuntimeError: CUDA out of memory | 2 GiB" in text.split("## Failed runs", 1)[1]
    assert "superseded" in text


def test_records_scored_at_different_resolutions_form_separate_groups(tmp_path):
    def record(method, resolution):
        return {
            "status": "ok", "method": method, "label": method, "dataset": "pascal_context",
            "tasks": ["semseg"], "backbone": "swin_tiny", "budget": "paper", "seed": 0,
            "eval_resolution": resolution, "metrics": {"semseg": {"miou": 50.0}},
            "params": {"trainable": 1}, "_path": f"{method}-{resolution}",
        }

    groups = build_groups([record("single_task", "448"), record("full_ft", "448"),
                           record("single_task", "original")])
    budgets = sorted(g.budget for g in groups)
    assert budgets == ["paper (scored at 448)", "paper (scored at original)"]


def test_records_of_different_scenes_form_separate_groups():
    """Render-2 and render-3 records of one setting are two comparisons, not two seeds of
    one; records of one version keep the plain name."""

    def record(method, version, seed=0, miou=50.0):
        return {
            "status": "ok", "method": method, "label": method, "dataset": "synthetic",
            "data_version": version, "tasks": ["semseg"], "backbone": "swin_micro",
            "budget": "quick", "seed": seed, "eval_resolution": "64",
            "metrics": {"semseg": {"miou": miou}}, "params": {"trainable": 1},
            "_path": f"{method}-{version}-{seed}",
        }

    mixed = build_groups([record("single_task", 2, miou=17.0), record("full_ft", 2),
                          record("single_task", 3), record("full_ft", 3, seed=1)])
    assert sorted(g.budget for g in mixed) == ["quick (render 2)", "quick (render 3)"]
    by_budget = {g.budget: g for g in mixed}
    row = next(r for r in by_budget["quick (render 3)"].rows if r.method == "full_ft")
    assert row.seeds == [1]  # not seed 0 of render 2
    (plain,) = build_groups([record("single_task", 3), record("full_ft", 3)])
    assert plain.budget == "quick"


def test_groups_that_differ_only_in_a_swept_value_get_pages_of_their_own(tmp_path):
    records = swept_records(tmp_path)
    groups = build_groups([{**r, "_path": f"{i}"} for i, (_, r) in enumerate(records)])
    assert len(groups) == 2
    assert len({g.slug for g in groups}) == 2
    assert {g.budget for g in groups} == {"smoke (lr=1e+40)", "smoke (lr=1e-40)"}


def test_runs_on_other_devices_are_named_in_a_note(tmp_path):
    results = tmp_path / "results"
    published_records(results)  # six records on "test gpu"
    for seed in (3, 4):
        odd = make_record("lora r=8", "lora", (60, 50, 50, 20), seed=seed)
        odd["cost"]["device"] = "cpu (1 threads)"
        write(results, odd)
    odd = make_record("bitfit", "bitfit", (55, 50, 50, 20), seed=0)
    odd["cost"]["device"] = "cpu (2 threads)"
    write(results, odd)
    (page,) = build(results, tmp_path / "reports")
    text = page.read_text()
    assert ("Not every run ran on one device: 6 on test gpu, the others on cpu (1 threads): "
            "lora r=8 (seeds 3, 4); cpu (2 threads): bitfit (seed 0).") in text


def test_runs_on_one_device_need_no_device_note(tmp_path):
    results = tmp_path / "results"
    published_records(results)
    (page,) = build(results, tmp_path / "reports")
    assert "Not every run ran on one device" not in page.read_text()
