"""Learning curves: recorded by a run (per-epoch training loss of every task, validation
metrics every `eval_every` epochs), kept out of the run's key and its results, and drawn."""

import json
import math

import pytest

from benchmark.experiment import DataCache, run_experiment
from benchmark.run import compose_all, main
from tests.conftest import SMALL_DATA

TASKS = ["semseg", "human_parts", "sal", "normals"]


@pytest.mark.slow
def test_a_run_records_its_curves_and_eval_every_changes_nothing_else(tmp_path):
    overrides = ["method=full_ft", "budget=smoke", "budget.epochs=2", *SMALL_DATA,
                 "progress=false", "checkpoint_every=0"]
    with_val, plain = compose_all([
        [*overrides, "eval_every=1", f"results_dir={tmp_path / 'a'}"],
        [*overrides, f"results_dir={tmp_path / 'b'}"],
    ])
    cache = DataCache()
    a = run_experiment(with_val, cache, log=lambda _: None)
    b = run_experiment(plain, cache, log=lambda _: None)
    # the curves enter neither the run's key nor its metrics or final loss
    assert a["run_dir"].split("/")[-1] == b["run_dir"].split("/")[-1]
    assert a["metrics"] == b["metrics"] and a["final_loss"] == b["final_loss"]
    for record in (a, b):
        assert sorted(record["curves"]["train_loss"]) == sorted(TASKS)
        for curve in record["curves"]["train_loss"].values():
            assert len(curve) == 2 and all(math.isfinite(v) and v > 0 for v in curve)
        assert record["curves"]["train_loss"] == b["curves"]["train_loss"]
    assert b["curves"]["val"] == []
    assert [p["epoch"] for p in a["curves"]["val"]] == [1, 2]
    assert a["curves"]["val"][-1]["metrics"] == a["metrics"]  # the last pass is the result
    assert sorted(a["curves"]["val"][0]["metrics"]) == sorted(TASKS)
    # the record on disk is strict JSON and carries the same curves
    path = tmp_path / "a" / a["run_dir"].split(str(tmp_path / "a") + "/", 1)[1] / "result.json"
    text = path.read_text()
    assert json.loads(text, parse_constant=_reject)["curves"] == a["curves"]


def _reject(name):
    raise AssertionError(f"{name} in a record")


@pytest.mark.parametrize("value", ["-1", "1.5", "true"])
def test_a_bad_eval_every_is_one_line_and_exit_2(value, capsys, tmp_path):
    code = main(["method=full_ft", "budget=smoke", f"eval_every={value}",
                 f"results_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "eval_every" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())
