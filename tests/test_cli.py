"""The command-line contracts of protocol §5.1: sweeps, records, bad input, params, report."""

import json

import pytest
from omegaconf import OmegaConf

from benchmark.config import compose_all, expand
from benchmark.params import count
from benchmark.records import iter_records
from tests.helpers import SMALL_DATA, run_cli

SMOKE = ["budget=smoke", *SMALL_DATA]


@pytest.mark.parametrize(
    ("override", "name", "valid"),
    [
        ("method=nope", "unknown method 'nope'", "decoders_only"),
        ("dataset=imagenet", "unknown dataset 'imagenet'", "pascal_context"),
        ("backbone=resnet50", "unknown backbone 'resnet50'", "swin_tiny"),
        ("budget=huge", "unknown budget 'huge'", "smoke"),
        ("method=full_ft,nope", "unknown method 'nope'", "single_task"),
    ],
)
def test_unknown_names_give_one_line_with_the_choices_and_exit_2(tmp_path, override, name, valid):
    proc = run_cli("benchmark.run", override, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert name in lines[0] and valid in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("budget.epochs=0", "budget.epochs"),
        ("budget.batch_size=-3", "budget.batch_size"),
        ("dataset.tasks=[semseg,foo]", "unknown task 'foo'"),
        ("budget.epoch=3", "budget.epoch"),
    ],
)
def test_invalid_values_exit_2_without_traceback(tmp_path, override, needle):
    proc = run_cli("benchmark.run", override, cwd=tmp_path)
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_smoke_sweep_writes_valid_records_with_delta_m(tmp_path):
    results = tmp_path / "results"
    # no method named: the methods of the sweep preset, here every method of the suite
    proc = run_cli(
        "benchmark.run", *SMOKE, "sweep=full", f"results_dir={results}", "progress=false",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    records = {r["method"]: r for _, r in iter_records(results)}
    from benchmark.config import sweep_methods

    assert set(records) == set(sweep_methods("full"))
    assert len(list(iter_records(results))) == len(records)  # the reference trained once
    # the same configurations, and what `benchmark.params` counts for them
    configs = compose_all(expand([*SMOKE, "sweep=full"]))
    methods = {cfg.method.name: OmegaConf.to_container(cfg.method, resolve=True)
               for cfg in configs}
    counted = {row["method"]: row for row in map(count, configs)}
    assert set(counted) == set(methods) == set(records)
    tasks = ["semseg", "human_parts", "sal", "normals"]
    for name, r in records.items():
        row = counted[name]
        assert r["label"] == row["label"], name
        assert r["params"] == {k: row[k] for k in ("trainable", "total", "decoders")}, name
        assert r["method_config"] == methods[name], name
        assert r["schema"] == 1 and r["status"] == "ok" and r["error"] is None
        assert r["tasks"] == tasks and r["dataset"] == "synthetic"
        assert r["backbone"] == "swin_micro" and r["budget"] == "smoke" and r["seed"] == 0
        assert set(r["metrics"]) == set(tasks)
        assert 0 <= r["metrics"]["semseg"]["miou"] <= 100
        assert 0 <= r["metrics"]["normals"]["mean"] <= 180
        assert isinstance(r["delta_m"], float)
        assert r["params"]["trainable"] <= r["params"]["total"]
        assert r["cost"]["train_seconds"] > 0 and r["cost"]["world_size"] == 1
        assert r["config"]["method"]["name"] == name
    assert records["single_task"]["delta_m"] == 0.0
    # the configured defaults reach the records (the labels follow from them)
    assert records["polyhistor"]["method_config"]["rank"] == 16
    assert records["vpt_deep"]["method_config"]["num_prompts"] == 200
    decoders_only = records["decoders_only"]["params"]
    assert decoders_only["trainable"] == decoders_only["decoders"]
    assert records["full_ft"]["params"]["trainable"] == records["full_ft"]["params"]["total"]
    # nothing but the results directory was written into the working directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]

    again = run_cli(
        "benchmark.run", "method=full_ft", *SMOKE, f"results_dir={results}", "progress=false",
        cwd=tmp_path,
    )
    assert again.returncode == 0 and "skip full_ft" in again.stdout + again.stderr

    report = run_cli(
        "benchmark.report", f"results_dir={results}", f"output_dir={tmp_path / 'reports'}",
        cwd=tmp_path,
    )
    assert report.returncode == 0, report.stderr
    index = (tmp_path / "reports" / "index.md").read_text()
    page = next(p for p in (tmp_path / "reports").glob("*.md") if p.name != "index.md").read_text()
    assert "synthetic" in index
    for label in ("single task", "full_ft", "decoders_only"):
        assert f"| {label} " in page


def test_params_json_gives_the_exact_pascal_counts(tmp_path):
    proc = run_cli(
        "benchmark.params", "dataset=pascal_context", "backbone=swin_tiny",
        "method=decoders_only,full_ft", "format=json", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {row["method"]: row for row in map(json.loads, proc.stdout.splitlines())}
    assert rows["decoders_only"]["trainable"] == 1_946_624
    assert rows["full_ft"]["trainable"] == 29_464_442
    assert rows["decoders_only"]["total"] == rows["full_ft"]["total"] == 29_464_442
    for row in rows.values():
        assert {"method", "label", "trainable", "total"} <= set(row)


def test_report_without_results_exits_2(tmp_path):
    proc = run_cli("benchmark.report", f"results_dir={tmp_path / 'none'}", cwd=tmp_path)
    assert proc.returncode == 2 and "no results directory" in proc.stderr


def test_the_full_sweep_runs_every_method_and_the_default_the_papers_main_rows():
    from benchmark.config import choices, sweep_methods

    full, default = sweep_methods("full"), sweep_methods("default")
    assert set(full) == set(choices("method")) - {"custom"} and len(full) == len(set(full))
    assert set(default) < set(full)
    assert {"single_task", "full_ft", "decoders_only", "mtlora"} <= set(default)


def test_ci_runs_the_readme_test_command():
    from tests.helpers import ROOT

    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in [line.strip() for line in ci]


@pytest.mark.slow
def test_a_method_from_another_package_runs_without_editing_the_repo(tmp_path):
    package = tmp_path / "mymethods"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "norm_tuning.py").write_text(
        "from benchmark.model import Encoder\n"
        "from methods.base import Method, freeze\n\n\n"
        "class NormTuning(Method):\n"
        "    def __init__(self, name=None, keep_embedding=False):\n"
        "        super().__init__(name)\n"
        "        self.keep_embedding = keep_embedding\n\n"
        "    def build_encoder(self, backbone, tasks):\n"
        "        freeze(backbone)\n"
        "        for name, p in backbone.named_parameters():\n"
        "            if '.norm' in name:\n"
        "                p.requires_grad_(True)\n"
        "        return Encoder(backbone, tasks)\n"
    )
    results = tmp_path / "results"
    proc = run_cli(
        "benchmark.run", "method=custom", "method._target_=mymethods.norm_tuning.NormTuning",
        "method.name=norm_tuning", "+method.keep_embedding=true", *SMOKE,
        f"results_dir={results}", "progress=false", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    records = {r["method"]: r for _, r in iter_records(results)}
    assert set(records) == {"norm_tuning", "single_task"}
    run = records["norm_tuning"]
    assert run["status"] == "ok" and run["method_config"]["keep_embedding"] is True
    assert run["params"]["decoders"] < run["params"]["trainable"] < run["params"]["total"]
    assert isinstance(run["delta_m"], float)


def test_custom_without_a_target_is_a_one_line_error(tmp_path):
    proc = run_cli("benchmark.run", "method=custom", cwd=tmp_path)
    assert proc.returncode == 2 and "method._target_" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
