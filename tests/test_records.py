"""The record type: a record built from its parts is written byte for byte as the committed
ones, a failed run's record has the same fields in the same order less the results, and the
checks a reader applies."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from benchmark import experiment
from benchmark.records import (
    FIELDS,
    REFERENCE_METHOD,
    Record,
    Run,
    migrate_record,
    read_record,
    write_json_atomic,
)

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted((ROOT / "results").rglob("result.json"))
RUN_FIELDS = [f.name for f in dataclasses.fields(Run)]
RESULT_FIELDS = ["params", "metrics", "delta_m", "reference", "cost", "final_loss", "curves",
                 "run_dir"]


def _run(**changes) -> Run:
    values = dict(method="lora", label="lora r=4", method_config={"rank": 4},
                  dataset="synthetic", data_version=3, tasks=["semseg", "sal"],
                  backbone="swin_micro",
                  budget="smoke", seed=3, eval_resolution="64", weights_sha256="ab",
                  config={"seed": 3}, versions={"mtpeft": "x"})
    return Run(**{**values, **changes})


@pytest.mark.skipif(not COMMITTED, reason="no committed records")
@pytest.mark.parametrize("path", COMMITTED[:5], ids=lambda p: p.parent.name)
def test_a_record_built_from_its_parts_is_the_committed_file_byte_for_byte(path, tmp_path):
    text = path.read_text()
    stored = json.loads(text)
    record = Record.finished(Run(**{k: stored[k] for k in RUN_FIELDS}),
                             **{k: stored[k] for k in RESULT_FIELDS})
    write_json_atomic(tmp_path / "result.json", record)
    assert (tmp_path / "result.json").read_text() == text
    assert list(record) == [k for k in FIELDS if k in stored] == list(stored)


def test_a_finished_record_names_each_tasks_primary_metric():
    record = Record.finished(_run(), params={"trainable": 1}, metrics={}, delta_m=None,
                             reference=None, cost={}, final_loss={}, curves={}, run_dir="d")
    assert record["primary"] == {"semseg": "semseg.miou", "sal": "sal.miou"}
    assert (record["schema"], record["status"], record["error"]) == (1, "ok", None)
    assert list(record) == list(FIELDS)  # every field, in the written order


def test_a_failed_record_has_the_run_and_the_error_in_the_written_order():
    record = Record.failed(_run(), "RuntimeError: boom")
    assert list(record) == [
        "schema", "status", "error", "method", "label", "method_config", "dataset",
        "data_version", "tasks", "backbone", "budget", "seed", "eval_resolution",
        "weights_sha256", "config", "versions",
    ]
    assert record["status"] == "failed" and record["error"] == "RuntimeError: boom"
    assert Record.problem(record) is None


def test_the_reference_method_is_defined_once():
    assert experiment.REFERENCE_METHOD is REFERENCE_METHOD == "single_task"


def test_the_checks_a_reader_applies():
    ok = Record.finished(_run(), params={"trainable": 5}, delta_m=None, reference=None,
                         metrics={"semseg": {"miou": 50.0}, "sal": {"miou": 40.0, "maxf": None}},
                         cost={"train_seconds": 1.0}, final_loss={}, curves={}, run_dir="d")
    assert Record.problem(ok) is None and Record.unknown_schema(ok) is None
    assert Record.problem(None) == "not valid JSON, or not a JSON object"
    assert Record.problem({**ok, "seed": True}) == "invalid 'seed': True"
    assert Record.problem({k: v for k, v in ok.items() if k != "label"}) == (
        "missing field 'label'")
    assert Record.problem({**ok, "tasks": ["semseg", "flying"]}).startswith("invalid 'tasks'")
    assert Record.problem({**ok, "metrics": {"semseg": {"miou": 50.0}}}) == (
        "no sal.miou in 'metrics'")
    assert Record.problem({**ok, "metrics": {**ok["metrics"], "sal": {"miou": 1, "x": "a"}}}) \
        == "non-numeric value in metrics['sal']"
    assert Record.problem({**ok, "params": {}}) == "missing 'params.trainable'"
    assert Record.problem({**ok, "cost": {"peak_memory_mb": "1"}}) == (
        "invalid 'cost.peak_memory_mb'")
    assert Record.unknown_schema({**ok, "schema": 2}) == (
        "unknown schema version 2 (this version reads 1; a newer mtpeft wrote it?)")


def test_an_old_record_reads_in_todays_names(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"metrics": {"normals": {"rmse": 30.0, "mean": 20.0}}}))
    assert read_record(path)["metrics"]["normals"] == {"mean": 20.0, "rms": 30.0}


def test_a_record_from_before_data_versions_is_of_render_2_scenes():
    old = {"dataset": "synthetic", "metrics": {}}
    assert migrate_record(dict(old))["data_version"] == 2
    assert migrate_record({"dataset": "nyud"})["data_version"] is None
    assert migrate_record({"dataset": "synthetic", "data_version": 3})["data_version"] == 3
