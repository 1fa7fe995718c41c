"""`benchmark.config.schema` and `checks`: every configuration key is declared with a type
and a range, and every invalid value of every key stops the command with one line and exit
status 2 before anything trains."""

from __future__ import annotations

import os

import pytest

from benchmark import run
from benchmark.config import SCHEMA, choices, compose_all, expand, leaf_keys, method_keys
from benchmark.errors import UserError
from tests.helpers import SMALL_DATA, run_cli


def _keys_and_combos() -> dict[str, tuple[list[str], object]]:
    """Every key of every composable configuration (each group choice once), with a
    combination of group choices that has it and its declared check (None: undeclared)."""
    combos = [[]]
    for group in ("dataset", "backbone", "budget"):
        combos += [[f"{group}={c}"] for c in choices(group)]
    combos += [[f"method={m}"] for m in choices("method") if m != "custom"]
    found: dict[str, tuple[list[str], object]] = {}
    for combo in combos:
        (cfg,) = compose_all([combo]) if "dataset=" not in " ".join(combo) else [None]
        if cfg is None:  # real datasets validate only with their own tasks: compose bare
            from hydra import compose, initialize_config_module
            from hydra.core.global_hydra import GlobalHydra

            GlobalHydra.instance().clear()
            with initialize_config_module("benchmark.conf", version_base="1.3"):
                cfg = compose(config_name="config", overrides=combo)
        options = method_keys(cfg.method._target_)
        for key in leaf_keys(cfg):
            if key in found:
                continue
            if key in SCHEMA:
                spec = SCHEMA[key]
            elif key.startswith("method."):
                spec = options.get(key.split(".", 1)[1])
            else:
                spec = None
            found[key] = (combo, spec)
    return found


KEYS = _keys_and_combos()


def test_every_key_of_every_configuration_is_declared():
    undeclared = sorted(k for k, (_, spec) in KEYS.items() if spec is None)
    assert not undeclared, f"add these keys to benchmark.config.SCHEMA: {undeclared}"
    # the enumeration reaches every group and the methods' own options
    assert {"seed", "budget.lr", "dataset.num_classes", "backbone.timm_checkpoint",
            "method.rank", "method.targets", "method.dora", "checkpoint_every"} <= set(KEYS)


CASES = [(key, bad) for key, (_, spec) in sorted(KEYS.items()) if spec is not None
         for bad in spec.bad_values()]


def test_the_cases_cover_every_key():
    assert {key for key, _ in CASES} == set(KEYS)
    assert len(CASES) >= 2 * len(KEYS) - 5  # most keys get several invalid values


@pytest.mark.parametrize("key", sorted(KEYS))
def test_an_invalid_value_of_every_key_exits_2_with_one_line(key, capsys, monkeypatch):
    """The whole command, once per key (composing is what takes the time)."""
    monkeypatch.setattr(run, "run_sweep", lambda configs: pytest.fail(f"{key} trained"))
    combo, spec = KEYS[key]
    bad = spec.bad_values()[0]
    status = run.main([*combo, f"{key}={bad}"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert key in lines[0], lines[0]


def test_every_invalid_value_of_every_key_is_refused_in_one_line():
    """Each value as the override grammar reads it, set into a composed configuration."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf, open_dict

    from benchmark.config import check_config

    parser = OverridesParser.create()
    bases = {}
    for key, bad in CASES:
        combo = tuple(KEYS[key][0])
        if combo not in bases:
            bases[combo] = _compose(list(combo))
        cfg = bases[combo].copy()
        with open_dict(cfg):
            OmegaConf.update(cfg, key, parser.parse_override(f"{key}={bad}").value())
        with pytest.raises(UserError) as caught:
            check_config(cfg)
        assert "\n" not in str(caught.value), (key, bad)
        assert key in str(caught.value) or "task" in str(caught.value), (key, bad)


def _compose(combo):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("benchmark.conf", version_base="1.3"):
        return compose(config_name="config", overrides=combo)


def test_a_bad_boolean_never_reaches_training_from_the_command_line(tmp_path):
    proc = run_cli("benchmark.run", "force=no", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: force must be true or false, got 'no'"
    assert not (tmp_path / "results").exists()


def test_one_task_name_is_a_list_of_one_and_a_bad_one_says_how_to_write_a_list():
    (cfg,) = compose_all([["dataset.tasks=semseg"]])
    assert list(cfg.dataset.tasks) == ["semseg"]
    with pytest.raises(UserError, match=r"several as dataset.tasks=\[semseg,sal\]"):
        compose_all([["dataset.tasks=s"]])


def test_an_image_size_the_backbone_cannot_take_names_the_sizes_that_work():
    with pytest.raises(UserError, match="multiples of 32.*e.g. 32 or 64"):
        compose_all([["dataset.image_size=60"]])
    (cfg,) = compose_all([["dataset.image_size=96"]])
    assert cfg.dataset.image_size == 96


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("dataset.val_size=-3", "dataset.val_size must be a whole number >= 1, got -3"),
        ("budget.train_batches=0", "budget.train_batches must be a whole number >= 1"),
        ("budget.drop_path=2", "budget.drop_path must be a finite number >= 0 and < 1"),
        ("checkpoint_every=-1", "checkpoint_every must be a number of epochs"),
        ("budget.warmup_epochs=-1", "budget.warmup_epochs must be a finite number >= 0"),
        ("dataset.train_size=4", "dataset.train_size=4 is smaller than budget.batch_size=16"),
        ("method=mtlora,lora method.rank=abc", "method.rank must be a whole number"),
        ("method=mtlora method.dora=no", "method.dora must be true or false"),
    ],
)
def test_the_issues_examples_name_the_key(override, needle):
    with pytest.raises(UserError, match=needle.replace("[", r"\[")):
        compose_all(expand(override.split()))


def test_every_point_of_a_sweep_is_checked_before_the_first_runs(monkeypatch, capsys):
    monkeypatch.setattr(run, "run_sweep", lambda configs: pytest.fail("trained"))
    assert run.main(["budget.lr=0.01,abc"]) == 2
    assert "budget.lr must be a finite number > 0, got 'abc'" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["file", "proc", "readonly"])
def test_a_results_dir_that_cannot_be_written_is_one_line(tmp_path, kind, capsys, monkeypatch):
    monkeypatch.setattr(run, "run_sweep", lambda configs: pytest.fail("trained"))
    if kind == "file":
        target = tmp_path / "results"
        target.write_text("")
        needle = "is a file, not a directory"
    elif kind == "proc":
        target = "/proc/mtpeft-results"
        needle = "cannot write there"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        tmp_path.chmod(0o500)
        target = tmp_path / "results"
        needle = "cannot write there (permission denied)"
    try:
        status = run.main(["method=full_ft", *SMALL_DATA, f"results_dir={target}"])
    finally:
        tmp_path.chmod(0o700)
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert f"results_dir={target}" in err and needle in err


def test_a_report_output_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    from benchmark.records import write_json_atomic
    from benchmark.report import main as report_main

    write_json_atomic(tmp_path / "r" / "x" / "result.json", {
        "schema": 1, "status": "ok", "method": "full_ft", "label": "full_ft",
        "dataset": "synthetic", "backbone": "swin_micro", "budget": "smoke", "seed": 0,
        "tasks": ["sal"], "metrics": {"sal": {"miou": 50.0}}, "params": {"trainable": 3},
    })
    (tmp_path / "out").write_text("")
    status = report_main([f"results_dir={tmp_path / 'r'}", f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert status == 2 and "is a file, not a directory" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("module", "args"),
    [("benchmark.params", ["--help"]), ("benchmark.perf", ["method=lora", "--help"]),
     ("benchmark.pretrain", ["--help"]), ("benchmark.data", ["verify", "--help"]),
     ("benchmark.evaluate", ["dataset=nyud", "-h"]), ("benchmark.run", ["--help"]),
     ("benchmark.report", ["--help"])],
)
def test_every_command_has_help(module, args, capsys):
    import importlib

    name = "benchmark.data.__main__" if module == "benchmark.data" else module
    main = importlib.import_module(name).main
    try:
        status = main(args)
    except SystemExit as stop:
        status = stop.code
    out = capsys.readouterr().out
    assert status == 0
    assert f"python -m {module}" in out
