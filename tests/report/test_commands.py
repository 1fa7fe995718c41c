"""The commands a page prints: three seeds of the same runs, and the missing reference,
both running as printed."""

import shlex

from omegaconf import OmegaConf

from benchmark.config import compose_all, expand, instantiate_method
from benchmark.experiment import reference_dir
from benchmark.records import run_dir
from benchmark.report.commands import reference_command
from benchmark.report.groups import build_groups
from tests.report.builders import (
    build,
    make_record,
    read_csv,
    swept_records,
    write,
)


def test_one_seed_says_so_and_prints_a_command_that_composes_the_same_runs(tmp_path):
    overrides = [["method=single_task"], ["method=full_ft"], ["method=mtlora", "method.rank=8"]]
    common = ["budget=smoke", "budget.lr=0.01", "dataset.train_size=24",
              f"results_dir={tmp_path / 'results'}"]
    configs = compose_all([[*o, *common] for o in overrides])
    keys = set()
    for cfg, values in zip(configs, [(50, 50, 50, 20), (52, 50, 50, 20), (51, 50, 50, 20)]):
        method = instantiate_method(cfg.method)
        record = make_record(method.label, cfg.method.name, values, dataset="synthetic",
                             backbone="swin_micro", budget="smoke")
        record["config"] = OmegaConf.to_container(cfg, resolve=True)
        write(tmp_path / "results", record)
        keys.add(run_dir(cfg, method.label).name)
    (page,) = build(tmp_path / "results", tmp_path / "reports")
    text = page.read_text()
    assert "no confidence interval can be given" in text and "vs best" not in text
    commands = text.split("```\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert len(commands) == 2  # the methods at their defaults share one, mtlora r=8 has its own
    composed = set()
    for command in commands:
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "benchmark.run"] and argv[-1] == "seed=0,1,2"
        for cfg in compose_all(expand(argv[3:])):
            assert cfg.seed in (0, 1, 2)
            if cfg.seed == 0:
                composed.add(run_dir(cfg, instantiate_method(cfg.method).label).name)
    assert composed == keys  # the same runs: seed 0 is skipped when the command runs


def test_a_group_without_reference_says_how_to_produce_it(tmp_path):
    results = tmp_path / "results"
    for seed in (0, 1):
        write(results, make_record("full_ft", "full_ft", (60, 50, 50, 20), seed,
                                   dataset="synthetic", backbone="swin_micro", budget="quick"))
    (page,) = build(results, tmp_path / "reports", figures=True)
    text = page.read_text()
    assert "python -m benchmark.run method=single_task dataset=synthetic" in text
    assert "backbone=swin_micro budget=quick seed=0,1" in text
    assert read_csv(tmp_path / "reports")["full_ft"]["delta_m"] == ""
    assert "## Figures" not in text  # nothing to plot without Δm


def test_the_hint_for_a_missing_reference_runs_as_printed(tmp_path):
    pairs = swept_records(tmp_path)
    groups = build_groups([{**r, "_path": f"{i}"} for i, (_, r) in enumerate(pairs)])
    for group in groups:
        command = reference_command(group)
        words = shlex.split(command)
        assert words[:3] == ["python", "-m", "benchmark.run"]
        (cfg,) = compose_all(expand(words[3:]))
        # the run the hint trains is the reference that the group's runs look for
        (original,) = [c for c, r in pairs if group.budget.endswith(
            f"(lr={r['config']['budget']['lr']})")]
        original.results_dir = str(tmp_path)
        assert run_dir(cfg, instantiate_method(cfg.method).label) == reference_dir(original)



def test_override_values_read_back_as_they_were():
    """Every value a config holds, written as an override, parses back to itself (hydra's
    own parser): quotes and the backslashes before them escaped, nothing else."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from benchmark.report.commands import override_value

    parser = OverridesParser.create()
    values = [None, False, 3, 0.5, 1e-40, "plain/path-1.2:x+", "a b", "it's", "a@b", "x,y",
              "", "C:\\dir\\", "a\\b", "a\\'b", [1, "a b"], {"k": [1, 2]}]
    for value in values:
        text = override_value(value)
        assert parser.parse_override(f"key={text}").value() == value, (value, text)
    assert override_value("plain/path-1.2:x+") == "plain/path-1.2:x+"  # no quotes needed
    assert override_value("it's") == "'it\\'s'"
    assert override_value("a\\b") == "'a\\b'"  # a backslash before no quote stays single
