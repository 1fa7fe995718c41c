"""Nothing lost, nothing done twice: resume after SIGKILL, failures, locks, atomic writes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from benchmark.config import compose_all, instantiate_method
from benchmark.errors import UserError
from benchmark.experiment import run_experiment
from benchmark.records import RunBusy, iter_records, run_dir, run_lock, write_json_atomic
from tests.helpers import ROOT, SMALL_DATA, run_cli

# Long enough (in epochs) that a kill lands between two checkpoints.
RESUMABLE = [
    "method=decoders_only", "budget=smoke", "budget.epochs=8", "budget.train_batches=4",
    *SMALL_DATA, "progress=false", "checkpoint_every=1",
]


def _directory(overrides):
    (cfg,) = compose_all([overrides])
    return run_dir(cfg, instantiate_method(cfg.method).label)


def _metrics(results):
    return {r["method"]: r["metrics"] for _, r in iter_records(results) if r["status"] == "ok"}


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_to_the_same_metrics(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    args = [*RESUMABLE, f"results_dir={killed}"]
    # the reference first, so that the kill lands inside the run under test
    reference = run_cli("benchmark.run", "method=single_task", *args[1:], cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    directory = _directory(args)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmark.run", *args], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (directory / "checkpoint-0.pt").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (directory / "checkpoint-0.pt").exists()
    assert not (directory / "result.json").exists(), "the run finished before the kill"

    resumed = run_cli("benchmark.run", *args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming decoders_only" in resumed.stdout + resumed.stderr
    assert not list(directory.glob("checkpoint-*.pt"))  # cleaned up after the record
    assert not (directory / "lock").exists()

    uninterrupted = run_cli("benchmark.run", *RESUMABLE, f"results_dir={clean}", cwd=tmp_path)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    assert _metrics(killed)["decoders_only"] == _metrics(clean)["decoders_only"]


@pytest.mark.slow
def test_a_diverging_run_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path):
    results = tmp_path / "results"
    proc = run_cli(
        "benchmark.run", "method=full_ft", "budget=smoke", "budget.lr=1e9,1e-2", *SMALL_DATA,
        f"results_dir={results}", "progress=false",
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "2 runs failed" in proc.stderr and "TrainingDiverged" in proc.stderr
    records = [r for _, r in iter_records(results)]
    failed = [r for r in records if r["status"] == "failed"]
    ok = [r for r in records if r["status"] == "ok"]
    assert failed and all("TrainingDiverged" in r["error"] for r in failed)
    assert all(r["config"]["budget"]["lr"] == 1e9 for r in failed)
    assert {r["method"] for r in failed} == {r["method"] for r in ok} == {"single_task", "full_ft"}
    assert all(r["config"]["budget"]["lr"] == 1e-2 for r in ok)
    # the report shows the failures as failed rows instead of dropping them
    report = run_cli(
        "benchmark.report", f"results_dir={results}", f"output_dir={tmp_path / 'r'}", cwd=tmp_path
    )
    assert report.returncode == 0
    pages = "".join(p.read_text() for p in (tmp_path / "r").glob("*.md"))
    assert "failed" in pages and "TrainingDiverged" in pages


def test_a_run_held_by_a_live_process_is_busy_and_a_dead_holders_lock_is_taken(tmp_path):
    directory = tmp_path / "run"
    with run_lock(directory), pytest.raises(RunBusy, match=str(os.getpid())), run_lock(directory):
        pass
    assert not (directory / "lock").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (directory / "lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead)}))
    with run_lock(directory):
        assert json.loads((directory / "lock").read_text())["pid"] == os.getpid()


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    write_json_atomic(path, {"status": "ok", "n": 1})

    def broken_dump(obj, f, **kwargs):
        f.write('{"status": "o')
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(path, {"status": "ok", "n": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"status": "ok", "n": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_checkpoint_that_does_not_fit_is_a_clear_error(tmp_path):
    (cfg,) = compose_all([[*RESUMABLE, f"results_dir={tmp_path}"]])
    directory = run_dir(cfg, instantiate_method(cfg.method).label)
    directory.mkdir(parents=True)
    (directory / "checkpoint-0.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="force=true"):
        run_experiment(cfg, log=lambda _: None)
    assert not (directory / "lock").exists()


def test_the_committed_reference_run_is_found_by_every_method_of_the_full_sweep():
    """Run keys are stable: each method of `sweep=full`, at the default settings, maps to the
    directory of its committed reference record (an option added later, such as MTLoRA's
    `dora`, leaves the key unchanged at its default), so re-running skips it."""
    from benchmark.config import compose_all, instantiate_method, sweep_methods
    from benchmark.records import finished_record, run_dir
    from tests.helpers import ROOT

    for name in sweep_methods("full"):
        (cfg,) = compose_all([[f"method={name}", f"results_dir={ROOT / 'results'}"]])
        directory = run_dir(cfg, instantiate_method(cfg.method).label)
        record = finished_record(directory)
        assert record is not None and record["method"] == name, directory


def test_an_option_at_a_non_default_value_changes_the_run_key():
    from benchmark.config import compose_all
    from benchmark.records import run_key

    plain, dora = compose_all([["method=mtlora"], ["method=mtlora", "method.dora=true"]])
    assert run_key(plain) != run_key(dora)
