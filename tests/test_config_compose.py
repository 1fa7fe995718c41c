"""`benchmark.config.compose`: the sweep's product, hydra's errors as one line, and the
`key=value` options of the commands."""

from __future__ import annotations

import pytest

from benchmark.config import compose_all, expand, parse_options, pop_options
from benchmark.errors import UserError, first_line


def test_seeds_is_short_for_seed_0_to_n_minus_1():
    combos = expand(["method=full_ft", "seeds=3"])
    assert [c for c in combos] == [["method=full_ft", f"seed={i}"] for i in range(3)]
    for bad in (["seeds=0"], ["seeds=abc"], ["seeds=2", "seed=5"], ["seed=5", "seeds=2"]):
        with pytest.raises(UserError, match="seed"):
            expand(bad)


def test_make_bench_takes_seeds_and_the_quickstart_stays_one_seed():
    from tests.helpers import ROOT

    makefile = (ROOT / "Makefile").read_text()
    assert "SEEDS ?= 1" in makefile and "seeds=$(SEEDS)" in makefile


def test_the_product_runs_the_methods_first_or_last_when_listing():
    assert expand(["method=lora,bitfit", "seed=0,1"]) == [
        ["method=lora", "seed=0"], ["method=lora", "seed=1"],
        ["method=bitfit", "seed=0"], ["method=bitfit", "seed=1"],
    ]
    # without method=, the preset's methods: first axis in its order, or last in name order
    combos = expand(["seed=0,1"], default_sweep="default")
    assert combos[:2] == [["method=single_task", "seed=0"], ["method=single_task", "seed=1"]]
    assert len(combos) == 2 * 10
    listed = expand(["seed=0"], default_sweep="default", listing=True)
    assert [c[-1] for c in listed] == sorted(c[-1] for c in listed)


def test_hydras_error_is_one_line_with_its_choices_and_without_the_search_path():
    err = RuntimeError(
        "In 'config': Could not find 'sweep/nope'\n\nAvailable options in 'sweep':\n"
        "\tdefault\n\tfull\nConfig search path:\n\tprovider=hydra, path=pkg://hydra.conf"
    )
    assert first_line(err) == "In 'config': Could not find 'sweep/nope'; choose from default, full"
    assert first_line(RuntimeError("\n  boom  \nsecond line")) == "boom"
    assert first_line(RuntimeError("")) == ""


def test_a_composition_error_that_lists_choices_names_them_in_one_line():
    with pytest.raises(UserError) as caught:
        compose_all([["hydra/launcher=nope"]])
    text = str(caught.value)
    assert "\n" not in text and "Config search path" not in text
    assert "Could not find 'hydra/launcher/nope'; choose from " in text and "basic" in text


def test_options_are_taken_out_of_the_overrides_the_last_one_winning():
    options, rest = pop_options(
        ["format=json", "method=lora", "format=table", "seed=1", "steps"],
        {"format": "x", "steps": None},
    )
    assert options == {"format": "table", "steps": None}
    assert rest == ["method=lora", "seed=1", "steps"]


def test_help_prints_the_commands_doc_and_exits_0(capsys):
    with pytest.raises(SystemExit) as stop:
        pop_options(["a=1", "--help"], {"a": None}, "the doc of the command")
    assert stop.value.code == 0 and capsys.readouterr().out == "the doc of the command\n"
    # no doc: -h is an override like any other (the command handles it, or hydra refuses it)
    assert pop_options(["-h"], {"a": None}) == ({"a": None}, ["-h"])


def test_a_command_of_options_only_refuses_anything_else_naming_it():
    assert parse_options(["steps=3"], {"steps": None, "out": "x"}, "give steps=N") == {
        "steps": "3", "out": "x"}
    for bad in ("nope=1", "steps"):
        with pytest.raises(UserError) as caught:
            parse_options(["steps=3", bad], {"steps": None}, "give steps=N")
        assert str(caught.value) == f"unknown argument {bad!r}; give steps=N"
