"""Sweeps handed to hydra's launchers (`hydra/launcher=...`): the job list, and one local job
through submitit and joblib; GPU claims and the lock of a requeued SLURM job."""

import json
import socket

import pytest

from benchmark.config import compose_all, expand, instantiate_method
from benchmark.experiment import reference_dir
from benchmark.launch import claim_one, is_hydra_override, plan_waves, reference_overrides
from benchmark.records import RunBusy, iter_records, run_dir, run_lock, write_json_atomic
from tests.helpers import SMALL_DATA, run_cli


def _sweep(*overrides):
    combos = expand(list(overrides))
    return compose_all(combos), combos


def _finish(cfg):
    directory = run_dir(cfg, instantiate_method(cfg.method).label)
    write_json_atomic(directory / "result.json", {"status": "ok"})


def _methods(wave):
    return [next(o for o in job if o.startswith("method=")) for job in wave]


def test_hydra_overrides_are_told_apart():
    assert is_hydra_override("hydra/launcher=joblib")
    assert is_hydra_override("hydra.launcher.n_jobs=2")
    assert not is_hydra_override("method=full_ft,lora")
    assert not is_hydra_override("results_dir=hydra")


def test_references_form_the_first_wave_and_finished_runs_are_left_out(tmp_path):
    results = f"results_dir={tmp_path}"
    configs, combos = _sweep("method=lora,mtlora", "method.rank=8", "seed=0,1", results)
    waves, skipped = plan_waves(configs, combos)
    assert [len(w) for w in waves] == [2, 4] and not skipped
    references, others = waves
    assert _methods(references) == ["method=single_task"] * 2
    for job in references:  # none of the method's options; never forced
        assert not any(o.startswith("method.") for o in job) and "force=false" in job
    assert all(f"results_dir={tmp_path}" in job for wave in waves for job in wave)
    # each reference job composes to the reference that the runs of its seed look up
    (ref_cfg,) = compose_all([references[1]])
    assert run_dir(ref_cfg, "single task") == reference_dir(configs[1])

    _finish(ref_cfg)  # seed 1's reference exists
    _finish(configs[0])  # lora seed 0 is done
    waves, skipped = plan_waves(configs, combos)
    assert [len(w) for w in waves] == [1, 3]
    assert len(skipped) == 1 and skipped[0].startswith("skip lora") and "seed 0" in skipped[0]
    forced, combos = _sweep("method=lora,mtlora", "method.rank=8", "seed=0,1", results,
                            "force=true")
    waves, skipped = plan_waves(forced, combos)
    assert [len(w) for w in waves] == [1, 4] and not skipped


def test_a_listed_single_task_run_is_its_own_reference_job(tmp_path):
    configs, combos = _sweep("method=decoders_only,single_task", f"results_dir={tmp_path}")
    waves, _ = plan_waves(configs, combos)
    assert [_methods(w) for w in waves] == [["method=single_task"], ["method=decoders_only"]]
    assert "force=false" not in waves[0][0]
    assert reference_overrides(["method=lora", "+method.extra=1", "force=true"]) == [
        "method=single_task", "force=false"
    ]


def test_the_summary_counts_jobs_apart_from_the_references_that_failed_inside_them(capsys):
    from hydra.core.utils import JobReturn, JobStatus

    from benchmark.launch import _summary

    def job(status, run, failures=(), error=None):
        outcome = {"status": status, "run": run, "error": error, "failures": list(failures)}
        return JobReturn(overrides=[f"run={run}"], status=JobStatus.COMPLETED,
                         _return_value=outcome)

    returns = [
        job("ok", "lora seed 0", failures=["single_task seed 0 (reference): diverged"]),
        job("ok", "lora seed 1"),
        job("failed", "mtlora seed 0", error="nan loss"),
        job("busy", "mtlora seed 1"),
        JobReturn(overrides=["method=dora"], status=JobStatus.FAILED,
                  _return_value=RuntimeError("killed")),
    ]
    assert _summary(returns, ["/r"]) == 1
    printed = capsys.readouterr()
    out = printed.err  # the summary, on stderr as a sweep in one process prints it
    assert printed.out.splitlines() == ["ok: lora seed 0", "ok: lora seed 1",
                                        "failed: mtlora seed 0", "busy: mtlora seed 1"]
    assert "5 jobs: 2 finished" in out
    assert "1 runs were left to the processes training them" in out
    assert "records are in /r/; the report: python -m benchmark.report results_dir=/r" in out
    assert "3 runs failed:" in out
    for line in ("single_task seed 0 (reference): diverged", "mtlora seed 0: nan loss",
                 "job method=dora: RuntimeError('killed')"):
        assert f"  {line}" in out
    assert _summary(returns[1:2]) == 0
    assert "1 jobs: 1 finished" in capsys.readouterr().err


def test_gpu_claims_are_exclusive_and_released(tmp_path):
    keys = ["gpu-a", "gpu-b"]
    with claim_one(keys, tmp_path) as first, claim_one(keys, tmp_path) as second:
        assert {first, second} == {0, 1}
    with claim_one(keys, tmp_path) as again:
        assert again == 0


def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
    directory = tmp_path / "run"
    directory.mkdir()
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    lock = directory / "lock"
    other_host = {"host": socket.gethostname() + "-other", "pid": 1}
    lock.write_text(json.dumps({**other_host, "slurm_job": "78", "slurm_restart": 0}))
    with pytest.raises(RunBusy), run_lock(directory):
        pass  # another job's lock is respected
    lock.write_text(json.dumps({**other_host, "slurm_job": "77", "slurm_restart": 0}))
    with run_lock(directory):  # this job before its requeue: gone
        assert json.loads(lock.read_text())["slurm_restart"] == 1


def test_an_unknown_launcher_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("benchmark.run", "budget=smoke", "hydra/launcher=nope", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "hydra/launcher" in lines[0] and "Traceback" not in proc.stderr


def _launched(tmp_path, *overrides):
    results = tmp_path / "results"
    proc = run_cli(
        "benchmark.run", "method=single_task", "budget=smoke", *SMALL_DATA, "progress=false",
        "results_dir=results", *overrides, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # records, hydra's and submitit's files under results_dir; nothing else in the cwd
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]
    assert sorted(p.name for p in results.iterdir()) == [".hydra", "synthetic"]
    return proc, [r for _, r in iter_records(results)]


@pytest.mark.slow
def test_submitit_local_runs_a_sweep_point_and_skips_it_next_time(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc, records = _launched(tmp_path, "hydra/launcher=submitit_local")
    assert [r["status"] for r in records] == ["ok"] and records[0]["method"] == "single_task"
    assert "ok: single task seed 0" in proc.stdout
    assert list((tmp_path / "results" / ".hydra").glob("*/.submitit"))
    again, _ = _launched(tmp_path, "hydra/launcher=submitit_local")
    assert "skip single task seed 0" in again.stdout
    assert "Submitit" not in again.stdout + again.stderr  # nothing launched


@pytest.mark.slow
def test_joblib_runs_sweep_points_side_by_side(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    _, records = _launched(tmp_path, "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert sorted(r["seed"] for r in records) == [0, 1]
    assert all(r["status"] == "ok" and r["cost"]["world_size"] == 1 for r in records)


def test_the_slurm_preset_sets_resources_and_requeues_on_time_out():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("benchmark.conf", version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.gpus_per_node == 1 and launcher.mem_gb and launcher.timeout_min
    assert launcher.max_num_timeout > 0
