"""PASCAL-Context and NYUD-v2 on small generated trees in the public releases' layouts
(protocol §1.1, 1.2): their labels pixel by pixel, their configuration, smoke runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmark.config import compose_all
from benchmark.data import dataset_info, labels_at_original_size, load_real_split
from benchmark.errors import UserError
from benchmark.run import main as run_main
from tests.real_trees import (
    BOTH_IDS,
    FALLBACK_IDS,
    INVALID_CONTEXT,
    NYUD_VAL,
    PASCAL_TRAIN,
    PASCAL_VAL,
    SMOKE,
    crop,
    dataset_cfg,
)


def test_pascal_labels_match_what_was_written_pixel_by_pixel(pascal, tmp_path):
    root, expected = pascal
    cfg = dataset_cfg("pascal_context", root, tmp_path,
                      "dataset.tasks=[semseg,human_parts,sal,normals,edge]")
    for split_name, ids in (("train", PASCAL_TRAIN), ("val", PASCAL_VAL)):
        split = load_real_split(cfg, split_name, progress=False)
        assert split.ids == ids and len(split) == len(ids)
        assert split.arrays["image"].shape[1:] == (64, 64, 3)  # the canvas: largest image
        for i, image_id in enumerate(ids):
            ex = expected[image_id]
            assert tuple(split.sizes[i].tolist()) == ex["semseg"].shape
            for name in ("image", "semseg", "human_parts", "sal"):
                inside, whole = crop(split, i, name)
                np.testing.assert_array_equal(inside, ex[name], err_msg=f"{image_id} {name}")
                if name != "image" and inside.shape != whole.shape:
                    assert (whole[inside.shape[0]:] == 255).all()  # no label outside
            labels = labels_at_original_size(split, i, ["semseg", "human_parts", "sal",
                                                        "normals", "edge"], torch.device("cpu"))
            assert labels["semseg"].dtype == torch.int64 and labels["semseg"].shape[0] == 1
            normals = labels["normals"][0].permute(1, 2, 0).numpy()
            np.testing.assert_allclose(normals, ex["normals"], atol=1e-6)
            invalid = np.isin(ex["label_map"], INVALID_CONTEXT)
            assert (normals[invalid] == 0).all() and (normals[~invalid] != 0).any(-1).all()
            lm = ex["label_map"]
            edge = np.zeros(lm.shape, bool)
            for dy, dx in ((0, 1), (1, 0)):
                diff = lm[dy:, dx:] != lm[: lm.shape[0] - dy, : lm.shape[1] - dx]
                edge[dy:, dx:] |= diff
                edge[: lm.shape[0] - dy, : lm.shape[1] - dx] |= diff
            np.testing.assert_array_equal(labels["edge"][0].numpy(), edge.astype(np.int64))


def test_pascal_human_parts_cases_and_semseg_fallback(pascal, tmp_path):
    root, expected = pascal
    cfg = dataset_cfg("pascal_context", root, tmp_path)
    split = load_real_split(cfg, "train", progress=False)
    parts = {image_id: crop(split, i, "human_parts")[0] for i, image_id in enumerate(split.ids)}
    person = parts[PASCAL_TRAIN[0]]  # case 0: the six-group map of persons only
    assert set(np.unique(person)) == {0, 1, 3, 6}
    assert person[25, 50] == 0  # the cow's head is not a person part
    assert person[12, 12] == 3  # the arm was written after the head where they overlap
    for image_id in PASCAL_TRAIN[1:4]:  # no person / a person without parts / no object
        assert (parts[image_id] == 255).all()
    for image_id in FALLBACK_IDS & set(PASCAL_TRAIN):
        i = split.ids.index(image_id)
        np.testing.assert_array_equal(crop(split, i, "semseg")[0], expected[image_id]["semseg"])
    both = PASCAL_TRAIN.index(next(iter(BOTH_IDS)))
    assert (crop(split, both, "semseg")[0] == expected[PASCAL_TRAIN[both]]["semseg"]).all()


def test_nyud_labels_shift_classes_and_keep_depth_validity(nyud, tmp_path):
    root, expected = nyud
    cfg = dataset_cfg("nyud", root, tmp_path, "dataset.tasks=[semseg,depth,normals,edge]")
    split = load_real_split(cfg, "val", progress=False)
    assert split.ids == NYUD_VAL
    device = torch.device("cpu")
    for i, image_id in enumerate(split.ids):
        ex = expected[image_id]
        labels = labels_at_original_size(split, i, ["semseg", "depth", "normals", "edge"], device)
        semseg = labels["semseg"][0].numpy()
        np.testing.assert_array_equal(semseg, ex["semseg"])
        assert semseg[0, 0] == 255 and semseg[0, 1] == 0 and semseg[0, 2] == 39
        depth = labels["depth"][0, 0].numpy()
        np.testing.assert_array_equal(depth, ex["depth"])
        assert labels["depth"].shape[:2] == (1, 1)
        np.testing.assert_array_equal(labels["normals"][0].permute(1, 2, 0).numpy(), ex["normals"])
        np.testing.assert_array_equal(labels["edge"][0].numpy(), ex["edge"])
        np.testing.assert_array_equal(crop(split, i, "image")[0], ex["image"])


def test_official_mode_is_the_pascal_default_and_bad_modes_are_refused(pascal, tmp_path):
    root, _ = pascal
    assert dataset_cfg("pascal_context", root, tmp_path).augment == "official"
    assert load_real_split(dataset_cfg("pascal_context", root, tmp_path), "val",
                           progress=False).geometry.official
    (nyud_cfg,) = compose_all([["dataset=nyud"]])
    assert nyud_cfg.dataset.augment == "clean"
    with pytest.raises(UserError, match="dataset.augment must be one of official, clean"):
        dataset_info(dataset_cfg("pascal_context", root, tmp_path, "dataset.augment=cubic"))
    # the synthetic dataset has no such key: its run keys are unchanged
    (synthetic,) = compose_all([["dataset=synthetic"]])
    assert "augment" not in synthetic.dataset


@pytest.mark.parametrize("name", ["pascal_context", "nyud"])
def test_smoke_training_on_a_generated_tree(name, pascal, nyud, tmp_path):
    root = (pascal if name == "pascal_context" else nyud)[0]
    results = tmp_path / "results"
    resolution = "original" if name == "pascal_context" else "64"
    code = run_main([
        "method=full_ft", f"dataset={name}", f"dataset.root={root}",
        f"dataset.eval_resolution={resolution}", f"dataset.cache_dir={tmp_path / 'cache'}",
        f"results_dir={results}", *SMOKE,
    ])
    assert code == 0
    records = [json.loads(p.read_text()) for p in results.rglob("result.json")]
    assert {r["method"] for r in records} == {"full_ft", "single_task"}
    for record in records:
        assert record["status"] == "ok" and record["dataset"] == name
        assert record["eval_resolution"] == resolution
        for metrics in record["metrics"].values():
            assert all(np.isfinite(v) for v in metrics.values())
