"""Results that must never count, files a shared results directory can live with, and
nothing in a results directory that can run code."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark import checkpoint, experiment, run
from benchmark.checkpoint import TrainState, load_checkpoint, save_checkpoint
from benchmark.config import compose_all
from benchmark.errors import UserError
from benchmark.experiment import RunFailed, run_experiment
from benchmark.records import iter_records, read_record, run_dir, write_json_atomic
from benchmark.run import run_sweep
from benchmark.train import GroupResult
from tests.helpers import ROOT, SMALL_DATA

SMOKE = ["budget=smoke", *SMALL_DATA, "progress=false"]
TASKS = ["semseg", "human_parts", "sal", "normals"]


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def _metrics(normals=20.0, shift=0.0):
    return {"semseg": {"miou": 40.0 + shift}, "human_parts": {"miou": 30.0 + shift},
            "sal": {"miou": 50.0 + shift, "maxf": 60.0}, "normals": {"mean": normals}}


def _result(metrics):
    return GroupResult(tasks=list(metrics), metrics=metrics, trainable=10, total=20, decoders=5,
                       train_seconds=1.0, train_images=8, peak_memory_mb=None,
                       memory_kind="cpu_rss_increase", final_loss=1.0)


@pytest.fixture
def fake_training(monkeypatch):
    """Training replaced by fixed results per method; the calls are counted."""
    calls: list[str] = []
    outcomes: dict[str, object] = {}

    def train_groups(method, cfg, directory, cache):
        calls.append(method.name)
        outcome = outcomes.get(method.name, _metrics())
        if isinstance(outcome, Exception):
            raise outcome
        return [_result(outcome)]

    monkeypatch.setattr(experiment, "train_groups", train_groups)
    return calls, outcomes


def _configs(tmp_path, *methods):
    return compose_all(
        [[f"method={m}", *SMOKE, f"results_dir={tmp_path}"] for m in methods], training=True
    )


def _records(results):
    return {r["method"]: r for _, r in iter_records(results)}


def test_non_finite_metrics_fail_the_run_naming_the_metric_and_the_sweep_goes_on(
    tmp_path, fake_training, capsys
):
    _, outcomes = fake_training
    outcomes["full_ft"] = _metrics(normals=float("nan"))
    status = run_sweep(_configs(tmp_path, "full_ft", "decoders_only"))
    assert status == 1
    records = _records(tmp_path)
    assert records["full_ft"]["status"] == "failed"
    assert records["full_ft"]["error"] == "NotFinite: the final metric normals.mean is nan"
    assert records["decoders_only"]["status"] == "ok"
    assert records["single_task"]["status"] == "ok"
    for path, _ in iter_records(tmp_path):
        _strict(path.read_text())  # every record is strict JSON
    err = capsys.readouterr().err
    assert "1 runs failed" in err
    assert f"records are in {tmp_path}/; the report: python -m benchmark.report " \
           f"results_dir={tmp_path}" in err


def test_records_are_strict_json(tmp_path):
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "x.json", {"delta_m": float("nan")})
    assert not (tmp_path / "x.json").exists()


def test_a_failed_reference_is_tried_once_per_sweep(tmp_path, fake_training):
    calls, outcomes = fake_training
    outcomes["single_task"] = RuntimeError("boom")
    status = run_sweep(_configs(tmp_path, "full_ft", "decoders_only", "bitfit"))
    assert status == 1
    assert calls.count("single_task") == 1
    records = _records(tmp_path)
    assert all(records[m]["delta_m"] is None for m in ("full_ft", "decoders_only", "bitfit"))


def test_delta_m_is_filled_in_when_the_reference_finished_elsewhere(tmp_path, fake_training):
    calls, _ = fake_training
    (cfg,) = _configs(tmp_path, "full_ft")
    reference = experiment.reference_dir(cfg)
    # another process holds the reference: this run finishes without Δm ...
    with _held(reference):
        run_experiment(cfg, log=lambda _: None)
    assert _records(tmp_path)["full_ft"]["delta_m"] is None
    # ... then the reference finishes, and the sweep's end fills Δm in
    (ref_cfg,) = _configs(tmp_path, "single_task")
    run_experiment(ref_cfg, log=lambda _: None)
    assert experiment.fill_delta_m([cfg]) == 1
    record = _records(tmp_path)["full_ft"]
    assert record["delta_m"] == 0.0 and record["reference"] == str(reference)


def _held(directory):
    from benchmark.records import run_lock

    return run_lock(directory)


def test_the_sweep_counts_references_and_writes_plain_lines_without_a_terminal(
    tmp_path, fake_training, capsys
):
    configs = compose_all([[f"method={m}", *SMOKE[:-1], f"results_dir={tmp_path}"]
                           for m in ("full_ft", "decoders_only")], training=True)
    assert run_sweep(configs) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = [line for line in err.splitlines() if line.startswith("sweep: run")]
    # two runs and the single-task reference they need
    assert lines[0] == "sweep: run 1 of 3: full_ft seed 0"
    assert lines[1].startswith("sweep: run 3 of 3: decoders_only seed 0")


def test_a_full_disk_records_the_run_as_failed(tmp_path, monkeypatch):
    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "atomic_write", full)  # the checkpoint writer
    (cfg,) = compose_all(
        [["method=single_task", *SMOKE, "budget.train_batches=1", "checkpoint_every=1",
          f"results_dir={tmp_path}"]], training=True,
    )
    with pytest.raises(RunFailed, match="no space left on device"):
        run_experiment(cfg, log=lambda _: None)
    record = _records(tmp_path)["single_task"]
    assert record["status"] == "failed" and record["error"].startswith(
        "no space left on device writing ")
    assert "checkpoint-0.pt" in record["error"]


def test_records_and_caches_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        os.umask(0o077)
        write_json_atomic(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def test_a_finished_runs_leftovers_are_cleaned_up(tmp_path, fake_training):
    (cfg,) = _configs(tmp_path, "single_task")
    run_experiment(cfg, log=lambda _: None)
    directory = run_dir(cfg, "single_task")
    leftovers = [directory / "checkpoint-0.pt", directory / "group-0.json",
                 directory / ".checkpoint-0.pt.123.tmp", directory / ".result.json.abc.tmp"]
    for path in leftovers:
        path.write_bytes(b"x")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    import socket

    (directory / "lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead)}))
    run_experiment(cfg, log=lambda _: None)  # skipped: finished
    assert sorted(p.name for p in directory.iterdir()) == ["config.yaml", "result.json"]


# -- checkpoints hold tensors and plain values only ---------------------------------------


class _Planted:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_carrying_a_pickled_callable_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    planted = tmp_path / "planted.pt"
    torch.save({"state": {"epoch": 1}, "payload": _Planted(marker)}, planted)
    # what loading it without the guard would do: run the callable
    torch.load(planted, weights_only=False)
    assert marker.exists()
    marker.unlink()

    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(UserError) as caught:
        load_checkpoint(planted, model, optimizer, torch.device("cpu"))
    assert not marker.exists()
    message = str(caught.value)
    assert "\n" not in message and "refusing to resume" in message and "force=true" in message


def test_a_planted_checkpoint_stops_the_run_with_one_line(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "ran"
    args = ["method=decoders_only", *SMOKE, f"results_dir={tmp_path}"]
    (cfg,) = compose_all([args])
    directory = run_dir(cfg, "decoders_only")
    directory.mkdir(parents=True)
    torch.save({"state": _Planted(marker)}, directory / "checkpoint-0.pt")
    (ref,) = compose_all([["method=single_task", *args[1:]]])
    write_json_atomic(run_dir(ref, "single_task") / "result.json",
                      {"status": "ok", "metrics": _metrics(), "run_dir": "x"})
    assert run.main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "refusing to resume" in err
    assert not marker.exists()


def test_checkpoints_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(3)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = TrainState(epoch=2, step=7, images=56, seconds=12.5, last_loss=0.25)
    path = tmp_path / "checkpoint-0.pt"
    save_checkpoint(path, model, optimizer, state, torch.device("cpu"))
    assert state.saved_at == 12.5 and state.checkpoint_seconds > 0
    expected = torch.rand(3)  # the RNG continues from the saved state after loading
    torch.load(path, weights_only=True)  # plain values and tensors only
    other = nn.Linear(3, 2)
    other_opt = torch.optim.AdamW(other.parameters(), lr=0.1)
    loaded = load_checkpoint(path, other, other_opt, torch.device("cpu"))
    assert (loaded.epoch, loaded.step, loaded.images, loaded.seconds) == (2, 7, 56, 12.5)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
    assert other_opt.state_dict()["state"][0]["step"] == 1


def test_the_default_cadence_is_time_based_and_always_saves_the_last_epoch():
    from benchmark.checkpoint import should_checkpoint
    from benchmark.config import cadence

    (cfg,) = compose_all([[]])
    every = cadence(cfg.checkpoint_every)
    assert every == ("seconds", 600.0)
    state = TrainState(epoch=1, seconds=599.0)
    assert not should_checkpoint(state, every, last=False)
    assert should_checkpoint(state, every, last=True)
    state.seconds = 600.0
    assert should_checkpoint(state, every, last=False)
    state.saved_at = 600.0
    state.seconds = 1100.0
    assert not should_checkpoint(state, every, last=False)
    assert [should_checkpoint(TrainState(epoch=e), 2, False) for e in (1, 2, 3, 4)] == [
        False, True, False, True]
    assert not should_checkpoint(TrainState(epoch=4), 0, last=True)  # 0: none at all
    assert cadence("30s") == ("seconds", 30.0) and cadence("1h") == ("seconds", 3600.0)


def test_the_record_has_the_checkpoint_cost_and_the_weights_hash(tmp_path):
    (cfg,) = compose_all(
        [["method=decoders_only", *SMOKE, "budget.train_batches=1", "checkpoint_every=1",
          f"results_dir={tmp_path}"]], training=True,
    )
    record = run_experiment(cfg, log=lambda _: None)
    assert record["cost"]["checkpoint_seconds"] > 0
    shipped = ROOT / "benchmark" / "weights" / "swin_micro_upstream.safetensors"
    assert record["weights_sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert math.isfinite(record["delta_m"])
    assert not list(run_dir(cfg, "decoders_only").glob("checkpoint-*.pt"))


# -- SIGTERM ------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_stops_the_sweep_with_one_line_and_releases_the_lock(tmp_path):
    results = tmp_path / "results"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmark.run", "method=single_task", "budget=smoke",
         "budget.epochs=50", *SMALL_DATA, "progress=false", f"results_dir={results}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 300
    while not list(results.rglob("lock")) and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("terminated (SIGTERM)")
    assert "Traceback" not in err
    assert not list(results.rglob("lock"))


# -- pre-training and shipped weights ----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["epochs=0"], "epochs must be a whole number >= 1"),
     (["epochs=abc"], "epochs must be a whole number >= 1, got 'abc'"),
     (["train_size=8"], "train_size=8 is smaller than batch_size=32"),
     (["lr=-1"], "lr must be a finite number > 0"),
     (["output=x.pt"], "output must be a path ending in .safetensors")],
)
def test_pretrain_refuses_bad_settings_before_anything_runs(args, needle, capsys):
    from benchmark.pretrain import main

    shipped = ROOT / "benchmark" / "weights" / "swin_micro_upstream.safetensors"
    before = shipped.read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert shipped.read_bytes() == before


def test_pretrain_writes_to_the_cache_by_default(cache_dir):
    from benchmark.pretrain import default_output, parse

    assert parse([])["output"] == str(cache_dir / "weights" / "swin_micro_upstream.safetensors")
    assert default_output().parent == cache_dir / "weights"


def test_a_tiny_pretraining_writes_weights_that_match_their_card(tmp_path, capsys):
    from benchmark.pretrain import main

    output = tmp_path / "w" / "up.safetensors"
    status = main(["epochs=1", "train_size=32", "val_size=8", "batch_size=16",
                   f"output={output}"])
    assert status == 0, capsys.readouterr().err
    card = json.loads(output.with_suffix(".json").read_text())
    assert card["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
    assert sorted(p.name for p in output.parent.iterdir()) == ["up.json", "up.safetensors"]
    (cfg,) = compose_all([[f"backbone.weights={output}", *SMOKE]], training=True)
    from benchmark.records import run_key

    (plain,) = compose_all([SMOKE])
    assert run_key(cfg) != run_key(plain)  # other starting weights, another run


def test_shipped_weights_that_do_not_match_their_card_stop_with_one_line(
    tmp_path, monkeypatch, capsys
):
    from benchmark import backbone

    shipped = tmp_path / "weights"
    shutil.copytree(ROOT / "benchmark" / "weights", shipped)
    monkeypatch.setattr(backbone, "WEIGHTS_DIR", shipped)
    compose_all([SMOKE], training=True)  # the copy matches its card
    path = shipped / "swin_micro_upstream.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    monkeypatch.setattr(run, "run_sweep", lambda configs: pytest.fail("trained"))
    assert run.main(SMOKE) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "does not match its card" in err and "git checkout benchmark/weights" in err


def test_the_weights_hash_is_part_of_the_run_key(tmp_path):
    from benchmark.records import run_key

    copy = tmp_path / "copy.safetensors"
    shutil.copy(ROOT / "benchmark" / "weights" / "swin_micro_upstream.safetensors", copy)
    (a,) = compose_all([[f"backbone.weights={copy}"]])
    key = run_key(a)
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    os.utime(copy, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert run_key(a) != key


def test_read_record_reads_what_the_suite_writes(tmp_path):
    write_json_atomic(tmp_path / "r.json", {"a": [1, 2]})
    assert read_record(tmp_path / "r.json") == {"a": [1, 2]}
    assert pickle is not None
