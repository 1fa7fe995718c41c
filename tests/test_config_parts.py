"""The configuration parsed once into typed parts (`benchmark.config.parts`)."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import open_dict

from benchmark.config import compose_all
from benchmark.config.parts import ADDED_OPTIONS, key_part, parse
from benchmark.records import run_dir, run_key


def test_parse_hands_each_layer_its_group_typed():
    (cfg,) = compose_all([["method=lora", "budget=smoke", "seed=2"]])
    spec = parse(cfg)
    assert spec.data.name == "synthetic" and spec.data.tasks == tuple(cfg.dataset.tasks)
    assert spec.data.image_size == 64 and spec.data.augment == "clean"  # absent: the default
    assert spec.backbone.depths == (2, 2, 2, 2) and spec.backbone.weights == "default"
    assert spec.budget.name == "smoke" and spec.budget.epochs == cfg.budget.epochs
    assert spec.method.name == "lora" and spec.seed == 2
    assert parse(spec) is spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.data.name = "other"  # type: ignore[misc]


def test_an_added_option_at_its_default_stays_out_of_the_key():
    assert key_part("dataset", {"name": "d", "augment": "clean", "root": "/x"}) == {"name": "d"}
    assert key_part("dataset", {"name": "d", "augment": "official"}) == {
        "name": "d", "augment": "official"}
    assert ADDED_OPTIONS["method"] == {"dora": False}
    (cfg,) = compose_all([["method=lora", "budget=smoke"]])
    base = run_key(cfg)
    with open_dict(cfg):
        cfg.dataset.augment = "clean"  # written out at its default: the same run
        cfg.dataset.cache_dir = "/elsewhere"  # where files live: the same run
    assert run_key(parse(cfg)) == base
    with open_dict(cfg):
        cfg.dataset.augment = "official"
    assert run_key(cfg) != base


def test_the_reference_keeps_the_setting_with_the_single_task_method():
    from benchmark.experiment import reference_config

    (cfg,) = compose_all([["method=lora", "budget=smoke", "seed=1"]])
    ref = reference_config(cfg, force=False)
    assert ref.method.name == "single_task" and ref.seed == 1 and not ref.force
    assert ref.data == parse(cfg).data and ref.budget == parse(cfg).budget
    (direct,) = compose_all([["method=single_task", "budget=smoke", "seed=1"]])
    assert run_dir(ref, "single task") == run_dir(direct, "single task")


def test_the_render_version_enters_the_key_from_version_3_on(monkeypatch):
    """Records of render-v2 scenes keep their keys (the committed full-FT run of that version
    was named full-ft-seed0-979df1280e); any other version is a different run, and real
    datasets, whose files are the user's, carry no version."""
    import benchmark.data.synthetic as syn

    (cfg,) = compose_all([["method=full_ft"]])
    (real,) = compose_all([["method=full_ft", "dataset=pascal_context", "backbone=swin_tiny",
                            "backbone.weights=none"]])
    monkeypatch.setattr(syn, "RENDER_VERSION", 2)
    assert run_key(cfg) == "979df1280e"
    real_key = run_key(real)
    keys = set()
    for version in (3, 4):
        monkeypatch.setattr(syn, "RENDER_VERSION", version)
        keys.add(run_key(cfg))
        assert run_key(real) == real_key
    assert len(keys) == 2 and "979df1280e" not in keys
