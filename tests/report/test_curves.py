"""Learning curves: recorded by a run (per-epoch training loss of every task, validation
metrics every `eval_every` epochs), kept out of the run's key and its results, and drawn."""

import json
import math

import pytest

from benchmark.experiment import DataCache, run_experiment
from benchmark.report import curves, plots
from benchmark.report.command import write_reports
from benchmark.report.groups import build_groups
from benchmark.report.load import load
from benchmark.run import compose_all, main
from tests.conftest import SMALL_DATA
from tests.report.builders import SEMSEG, T_975_2, TASKS, three_seed_records


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


def test_learning_curves_are_drawn_one_line_per_configuration(tmp_path):
    three_seed_records(tmp_path / "results", curves=True)
    records, _ = load(tmp_path / "results")
    out = tmp_path / "reports"
    (page,) = write_reports(records, out, figures=True)
    (png,) = out.glob("*/learning_curves.png")
    assert png.stat().st_size > 1000 and png.with_suffix(".svg").exists()
    assert f"({page.stem}/learning_curves.png)" in page.read_text()
    (group,) = build_groups(records)
    panels = curves.group_curves(group.ok_rows, group.tasks)
    # four training-loss panels and the one validation metric recorded (semseg)
    assert len(panels) == 5 and sum("validation" in k for k in panels) == 1
    loss = panels["semseg: training loss"]["best"]
    assert loss.epochs == [1, 2, 3]
    assert loss.mean == pytest.approx([1.9, 1.0, 0.51])
    assert loss.half_width[1] == 0.0  # every seed at 1.0
    assert loss.half_width[0] == pytest.approx(T_975_2 * 0.1 / math.sqrt(3))
    styles = plots.assign_styles({(r.method, r.label) for r in group.ok_rows}, "single_task")
    fig = plots.build_curves_figure(panels, styles, title="t")
    drawn = [ax for ax in fig.axes if ax.get_visible()]
    assert len(drawn) == 5
    # one line per configuration with curves: the reference's records have none (written
    # before curves existed) and are left out, not drawn empty
    assert all(len(ax.get_lines()) == len(SEMSEG) for ax in drawn)
    assert {line.get_label() for line in drawn[0].get_lines()} == set(SEMSEG)


def test_the_learning_curves_svg_is_the_same_bytes_from_the_same_records(tmp_path):
    three_seed_records(tmp_path / "results", curves=True)
    records, _ = load(tmp_path / "results")
    svgs = []
    for out in (tmp_path / "a", tmp_path / "b"):
        write_reports(records, out, figures=True)
        (svg,) = out.glob("*/learning_curves.svg")
        svgs.append(svg.read_bytes())
    assert svgs[0] == svgs[1]
