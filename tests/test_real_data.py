"""Real-data loaders on small generated trees in the public releases' layouts (protocol §1.1, 1.2):
labels pixel by pixel, the preprocessed cache, batched augmentation, `verify`, smoke runs."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.io import savemat

from benchmark.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchLoader,
    Split,
    dataset_info,
    labels_at_original_size,
    load_real_split,
    prepared,
)
from benchmark.data.__main__ import main as verify_main
from benchmark.data.transforms import (
    Augmentation,
    Geometry,
    normals_rotation,
    rotate_normals,
    sampling_grid,
)
from benchmark.errors import UserError
from benchmark.run import compose_all
from benchmark.run import main as run_main
from tests.conftest import run_cli

# Sizes (height, width) cycle over the ids; 64x64 equals the test input size, so batches of
# that image are the labels themselves.
SIZES = [(40, 56), (56, 40), (64, 64), (48, 40)]
PASCAL_TRAIN = [f"2008_{i:06d}" for i in range(1, 7)]
PASCAL_VAL = [f"2009_{i:06d}" for i in range(1, 5)]
NYUD_TRAIN = [f"{i:04d}" for i in range(1, 7)]
NYUD_VAL = [f"{i:04d}" for i in range(101, 105)]
VALID_CONTEXT = [3, 4, 6]  # Context classes with normals ground truth
INVALID_CONTEXT = [1, 2, 5, 400]
FALLBACK_IDS = {PASCAL_TRAIN[1], PASCAL_VAL[0]}  # semseg only in semseg/pascal-context/
BOTH_IDS = {PASCAL_TRAIN[2]}  # semseg in both folders: VOC12 wins
SMOKE = ["budget=smoke", "budget.batch_size=2", "dataset.image_size=64", "backbone=swin_micro",
         "backbone.weights=none", "progress=false"]


def _write_jpeg(path: Path, image: np.ndarray) -> np.ndarray:
    Image.fromarray(image).save(path, quality=95)
    with Image.open(path) as img:  # what a decoder returns, JPEG being lossy
        return np.asarray(img.convert("RGB"))


def _write_palette_png(path: Path, ids: np.ndarray) -> None:
    img = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.astype(np.uint8).tobytes())
    img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


PART_DT = [("part_name", "O"), ("mask", "O")]
OBJ_DT = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]


def _rect(shape, top, left, bottom, right) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


def _objects(objects: list[tuple[str, int, list[tuple[str, np.ndarray]] | None]], shape):
    row = np.zeros((1, len(objects)), dtype=OBJ_DT)
    for k, (name, class_ind, parts) in enumerate(objects):
        if parts is None:
            part_row = np.zeros((0, 0))  # an object without part annotation
        else:
            part_row = np.zeros((1, len(parts)), dtype=PART_DT)
            for j, (part, mask) in enumerate(parts):
                part_row[0, j] = (part, mask)
        row[0, k] = (name, np.array([[class_ind]], np.uint8), np.ones(shape, np.uint8), part_row)
    return row


def _human_parts(path: Path, image_id: str, case: int, shape) -> np.ndarray:
    """Write the PASCAL-Part struct of one of four cases; return the expected map."""
    h, w = shape
    head = _rect(shape, 2, 3, 14, 15)
    arm = _rect(shape, 10, 10, 20, 30)  # overlaps the head: written later, wins
    foot = _rect(shape, h - 6, 0, h, 8)
    cow_head = _rect(shape, 20, w - 12, 30, w)
    expected = np.full(shape, 255, np.uint8)
    if case == 0:  # a person with parts, a cow with parts, a person without parts
        objects = [
            ("person", 15, [("head", head), ("luarm", arm), ("rfoot", foot)]),
            ("cow", 10, [("head", cow_head)]),
            ("person", 15, None),
        ]
        expected = np.zeros(shape, np.uint8)
        expected[head > 0] = 1
        expected[arm > 0] = 3
        expected[foot > 0] = 6
    elif case == 1:  # no person, but an animal with parts
        objects = [("cow", 10, [("head", cow_head)])]
    elif case == 2:  # only a person without parts
        objects = [("person", 15, None)]
    else:  # no object at all
        objects = []
    row = _objects(objects, shape) if objects else np.zeros((1, 0), dtype=OBJ_DT)
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (f"{image_id}.jpg", row)
    savemat(str(path), {"anno": anno})
    return expected


def make_pascal_tree(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """A PASCAL_MT tree (protocol §1.1) of 6 train and 4 val images; the expected labels."""
    for folder in ("JPEGImages", "ImageSets/Context", "semseg/VOC12", "semseg/pascal-context",
                   "human_parts", "sal_distill", "normals_distill", "pascal-context/trainval"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "ImageSets/Context/train.txt").write_text("\n".join(PASCAL_TRAIN) + "\n")
    (root / "ImageSets/Context/val.txt").write_text("\n".join(PASCAL_VAL) + "\n")
    expected = {}
    for k, image_id in enumerate(PASCAL_TRAIN + PASCAL_VAL):
        rng = np.random.default_rng(k)
        shape = SIZES[k % len(SIZES)]
        h, w = shape
        ex = {}
        # smooth colours survive JPEG well; the exact pixels are read back anyway
        yy, xx = np.mgrid[0:h, 0:w]
        image = np.stack([xx * 4 + k, yy * 4, (xx + yy) * 2], -1) % 256
        ex["image"] = _write_jpeg(root / "JPEGImages" / f"{image_id}.jpg", image.astype(np.uint8))

        semseg = rng.integers(0, 21, shape).astype(np.uint8)
        semseg[:4, :6] = 255
        if image_id in FALLBACK_IDS:
            _write_palette_png(root / "semseg/pascal-context" / f"{image_id}.png", semseg)
        else:
            Image.fromarray(semseg, "L").save(root / "semseg/VOC12" / f"{image_id}.png")
            if image_id in BOTH_IDS:
                other = np.zeros(shape, np.uint8)
                Image.fromarray(other, "L").save(root / "semseg/pascal-context" / f"{image_id}.png")
        ex["semseg"] = semseg

        ex["human_parts"] = _human_parts(root / "human_parts" / f"{image_id}.mat", image_id,
                                         k % 4, shape)

        sal = rng.integers(0, 256, shape).astype(np.uint8)
        sal[0, :4] = [127, 128, 0, 255]
        Image.fromarray(sal, "L").save(root / "sal_distill" / f"{image_id}.png")
        ex["sal"] = (sal >= 128).astype(np.uint8)

        label_map = rng.choice(VALID_CONTEXT + INVALID_CONTEXT, size=shape).astype(np.uint16)
        label_map[h // 2 :, : w // 2] = 3
        savemat(str(root / "pascal-context/trainval" / f"{image_id}.mat"),
                {"LabelMap": label_map})
        ex["label_map"] = label_map

        code = rng.integers(1, 256, (*shape, 3)).astype(np.uint8)
        Image.fromarray(code, "RGB").save(root / "normals_distill" / f"{image_id}.png")
        valid = np.isin(label_map, VALID_CONTEXT)
        ex["normals"] = np.where(valid[..., None], code.astype(np.float32) * 2 / 255 - 1, 0)
        expected[image_id] = ex
    return expected


def make_nyud_tree(root: Path, edge: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """A NYUD_MT tree (protocol §1.2) of 6 train and 4 val images; the expected labels."""
    for folder in ("images", "gt_sets", "segmentation", "depth", "normals", "edge"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "gt_sets/train.txt").write_text("\n".join(NYUD_TRAIN) + "\n")
    (root / "gt_sets/val.txt").write_text("\n".join(NYUD_VAL) + "\n")
    expected = {}
    for k, image_id in enumerate(NYUD_TRAIN + NYUD_VAL):
        rng = np.random.default_rng(100 + k)
        shape = SIZES[k % len(SIZES)]
        ex = {}
        image = rng.integers(0, 256, (*shape, 3)).astype(np.uint8)
        ex["image"] = _write_jpeg(root / "images" / f"{image_id}.jpg", image)
        raw = rng.integers(0, 41, shape).astype(np.uint8)
        raw[0, :3] = [0, 1, 40]
        Image.fromarray(raw, "L").save(root / "segmentation" / f"{image_id}.png")
        ex["semseg"] = np.where(raw == 0, 255, raw.astype(np.int64) - 1)
        depth = rng.uniform(0.5, 9.0, shape).astype(np.float32)
        depth[rng.random(shape) < 0.2] = 0
        np.save(root / "depth" / f"{image_id}.npy", depth)
        ex["depth"] = depth
        normals = rng.normal(size=(*shape, 3)).astype(np.float32)
        normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
        normals[:2] = 0  # no label
        np.save(root / "normals" / f"{image_id}.npy", normals)
        ex["normals"] = normals.astype(np.float16).astype(np.float32)
        if edge:
            e = (rng.random(shape) < 0.1).astype(np.float32)
            np.save(root / "edge" / f"{image_id}.npy", e)
            ex["edge"] = e.astype(np.uint8)
        expected[image_id] = ex
    return expected


def dataset_cfg(name: str, root: Path, cache: Path, *extra: str):
    (cfg,) = compose_all([[f"dataset={name}", f"dataset.root={root}",
                           f"dataset.cache_dir={cache}", "dataset.image_size=64", *extra]])
    return cfg.dataset


@pytest.fixture(scope="module")
def pascal(tmp_path_factory):
    root = tmp_path_factory.mktemp("pascal") / "PASCAL_MT"
    return root, make_pascal_tree(root)


@pytest.fixture(scope="module")
def nyud(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyud") / "NYUD_MT"
    return root, make_nyud_tree(root)


def _crop(split, i, name):
    h, w = (int(v) for v in split.sizes[i])
    return split.arrays[name][i, :h, :w].numpy(), split.arrays[name][i].numpy()


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
                inside, whole = _crop(split, i, name)
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
    parts = {image_id: _crop(split, i, "human_parts")[0] for i, image_id in enumerate(split.ids)}
    person = parts[PASCAL_TRAIN[0]]  # case 0: the six-group map of persons only
    assert set(np.unique(person)) == {0, 1, 3, 6}
    assert person[25, 50] == 0  # the cow's head is not a person part
    assert person[12, 12] == 3  # the arm was written after the head where they overlap
    for image_id in PASCAL_TRAIN[1:4]:  # no person / a person without parts / no object
        assert (parts[image_id] == 255).all()
    for image_id in FALLBACK_IDS & set(PASCAL_TRAIN):
        i = split.ids.index(image_id)
        np.testing.assert_array_equal(_crop(split, i, "semseg")[0], expected[image_id]["semseg"])
    both = PASCAL_TRAIN.index(next(iter(BOTH_IDS)))
    assert (_crop(split, both, "semseg")[0] == expected[PASCAL_TRAIN[both]]["semseg"]).all()


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
        np.testing.assert_array_equal(_crop(split, i, "image")[0], ex["image"])


def test_batches_resize_and_flip_normals_x(pascal, tmp_path):
    root, expected = pascal
    cfg = dataset_cfg("pascal_context", root, tmp_path, "dataset.augment=clean")
    split = load_real_split(cfg, "val", progress=False)
    tasks = ["semseg", "human_parts", "sal", "normals"]
    cpu = torch.device("cpu")
    plain = next(iter(BatchLoader(split, tasks, 4, cpu)))
    assert plain["image"].shape == (4, 3, 64, 64) and plain["semseg"].shape == (4, 64, 64)
    assert plain["normals"].shape == (4, 3, 64, 64) and plain["sal"].dtype == torch.int64
    square = [i for i, s in enumerate(split.sizes.tolist()) if s == [64, 64]][0]
    ex = expected[split.ids[square]]
    for task in ("semseg", "human_parts", "sal"):  # same size: the labels themselves
        np.testing.assert_array_equal(plain[task][square].numpy(), ex[task])
    np.testing.assert_allclose(plain["normals"][square].permute(1, 2, 0).numpy(), ex["normals"],
                               atol=1e-6)
    for i, image_id in enumerate(split.ids):  # nearest resizing invents no class
        written = set(np.unique(expected[image_id]["semseg"]).tolist())
        assert set(plain["semseg"][i].unique().tolist()) <= written

    flip_only = dataclasses.replace(split, geometry=dataclasses.replace(
        split.geometry, max_rotation=0.0, scale=(1.0, 1.0)))
    seen = set()
    for epoch in range(8):
        loader = BatchLoader(flip_only, tasks, 4, cpu, augment=True, seed=1)
        loader.set_epoch(epoch)
        batch = next(iter(loader))
        flipped = not torch.equal(batch["semseg"][square], plain["semseg"][square])
        seen.add(flipped)
        if flipped:
            assert torch.equal(batch["semseg"][square], plain["semseg"][square].flip(-1))
            n, p = batch["normals"][square], plain["normals"][square]
            torch.testing.assert_close(n[0], -p[0].flip(-1))
            torch.testing.assert_close(n[1:], p[1:].flip(-1))
            torch.testing.assert_close(batch["image"][square], plain["image"][square].flip(-1))
    assert seen == {True, False}


def test_zoomed_out_and_rotated_borders_carry_no_label(pascal, tmp_path):
    root, _ = pascal
    cfg = dataset_cfg("pascal_context", root, tmp_path, "dataset.augment=clean")
    split = load_real_split(cfg, "train", progress=False)
    zoom_out = dataclasses.replace(split, geometry=dataclasses.replace(
        split.geometry, scale=(0.75, 0.75)))
    batch = next(iter(BatchLoader(zoom_out, ["semseg", "normals"], 6, torch.device("cpu"),
                                  augment=True, seed=0)))
    for corner in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        assert (batch["semseg"][:, corner[0], corner[1]] == 255).all()
        assert (batch["normals"][:, :, corner[0], corner[1]] == 0).all()
        assert (batch["image"][:, :, corner[0], corner[1]] == 0).all()
    assert (batch["semseg"][:, 32, 32] != 255).any()


def constructed_split(mode: str, scale: float) -> Split:
    """Three 8 x 8 images on one canvas: colour 200, semseg class 3 with one void pixel,
    salient everywhere, normals (0, 0, 1), depth 2. Parts: image 0 all torso (2); image 1
    without people (stored all 255); image 2 a head (1) in its top-left 2 x 2 corner only."""
    n, side = 3, 8
    semseg = torch.full((n, side, side), 3, dtype=torch.uint8)
    semseg[:, 4, 4] = 255
    parts = torch.zeros(n, side, side, dtype=torch.uint8)
    parts[0], parts[1], parts[2, :2, :2] = 2, 255, 1
    normals = torch.zeros(n, side, side, 3)
    normals[..., 2] = 1.0
    arrays = {
        "image": torch.full((n, side, side, 3), 200, dtype=torch.uint8),
        "semseg": semseg, "human_parts": parts,
        "sal": torch.ones(n, side, side, dtype=torch.uint8),
        "normals": normals, "depth": torch.full((n, side, side), 2.0),
    }
    geometry = Geometry(size=16, max_rotation=0.0, scale=(scale, scale), flip=False,
                        augment=mode)
    return Split(arrays, torch.tensor([[side, side]] * n), ["a", "b", "c"], geometry)


def constructed_batch(mode: str, scale: float) -> dict:
    tasks = ["semseg", "human_parts", "sal", "normals", "depth"]
    loader = BatchLoader(constructed_split(mode, scale), tasks, 3, torch.device("cpu"),
                         augment=True)
    return next(iter(loader))


@pytest.mark.parametrize("mode", ["official", "clean"])
def test_what_a_zoom_out_brings_in_from_outside_the_image(mode):
    """Scale 1/2 into a 16 x 16 input: the image fills the centre 8 x 8, the ring around it
    comes from outside. Official: 0 there, which counts (background, not salient), black
    image, normals ignored; clean: no label for every task, the mean colour."""
    batch = constructed_batch(mode, 0.5)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
    ring = torch.ones(16, 16, dtype=torch.bool)
    ring[2:14, 2:14] = False  # beyond the reach of bicubic taps from inside the image
    centre = torch.zeros(16, 16, dtype=torch.bool)
    centre[6:10, 6:10] = True
    image = batch["image"][0]
    assert torch.allclose(image[:, centre], ((200 - mean) / std).expand(3, 16, 16)[:, centre])
    official = mode == "official"
    fill = 0 if official else 255
    for task in ("semseg", "human_parts", "sal"):
        assert (batch[task][0][ring] == fill).all(), task
    assert (batch["semseg"][:, centre] == 3).sum() == 3 * 16 - 3  # the void pixel kept
    assert (batch["sal"][:, centre] == 1).all()
    assert (batch["human_parts"][0][centre] == 2).all()
    assert (batch["normals"][:, :, ring] == 0).all()  # normals: no label either way
    torch.testing.assert_close(batch["normals"][0, :, 8, 8], torch.tensor([0.0, 0.0, 1.0]))
    assert (batch["depth"][:, 0][:, ring] == 0).all()
    # the official transform divides depth by the scale factor; clean treats a zoom as a crop
    assert (batch["depth"][:, 0][:, centre] == (4.0 if official else 2.0)).all()
    if official:
        black = (0 - mean) / std
        assert torch.allclose(image[:, ring], black.expand(3, 16, 16)[:, ring])
        # an image without people stays without a parts label, ring included
        assert (batch["human_parts"][1] == 255).all()
        # normals near the border blend with the zeros outside, then are unit vectors again
        edge = batch["normals"][0, :, 3, 8]
        torch.testing.assert_close(edge, torch.tensor([0.0, 0.0, 1.0]))
    else:
        assert (image[:, ring] == 0).all()
        assert (batch["human_parts"][1] == 255).all()
        assert (batch["normals"][0, :, 3, 8] == 0).all()  # outside: the zero vector


def test_official_parts_zoomed_off_the_view_are_no_label():
    """Zoom-in x2 about the centre: image 2's head (its top-left corner) leaves the view.
    Official: the parts map is then 0 everywhere, so the whole map is no label, as the
    official code marks it; clean keeps it as background."""
    official, clean = constructed_batch("official", 2.0), constructed_batch("clean", 2.0)
    assert (official["human_parts"][2] == 255).all()
    assert (clean["human_parts"][2] == 0).all()
    assert (official["human_parts"][0] == 2).all() and (clean["human_parts"][0] == 2).all()


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


@pytest.mark.parametrize("flip", [False, True])
def test_rotation_turns_normals_with_the_image(flip):
    """A ramp increasing along +x with normals (1, 0, 0) pointing up the ramp: after any
    rotation (and flip) the warped normals still point up the warped ramp."""
    n = 64
    angle = 17.0
    aug = Augmentation(torch.tensor([flip]), torch.tensor([angle]), torch.tensor([1.0]))
    grid, valid = sampling_grid(torch.tensor([[n, n]]), (n, n), n, aug, torch.device("cpu"))
    ramp = torch.arange(n, dtype=torch.float32).repeat(n, 1).view(1, 1, n, n)
    warped = F.grid_sample(ramp, grid, mode="bilinear", align_corners=False)[0, 0]
    mask = valid[0, 0] & (torch.rand(n, n) < 2)  # every valid pixel
    ys, xs = torch.nonzero(mask, as_tuple=True)
    design = torch.stack([xs.float(), ys.float(), torch.ones_like(xs, dtype=torch.float32)], 1)
    coef = torch.linalg.lstsq(design.double(), warped[ys, xs].double().unsqueeze(1)).solution
    gradient = F.normalize(coef[:2, 0].float(), dim=0)
    normals = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    turned = rotate_normals(normals, normals_rotation(aug, "down"))[0, :2, 0, 0]
    torch.testing.assert_close(turned, gradient, atol=2e-3, rtol=0)
    assert not valid[0, 0, 0, 0] and valid[0, 0, n // 2, n // 2]  # a rotated-in corner
    up = rotate_normals(normals, normals_rotation(aug, "up"))[0, :2, 0, 0]
    torch.testing.assert_close(up[1], -turned[1])  # the other sense for y-up normals


def test_the_cache_is_reused_and_rebuilt_when_a_source_changes(tmp_path, monkeypatch):
    root = tmp_path / "PASCAL_MT"
    expected = make_pascal_tree(root)
    cache = tmp_path / "cache"
    cfg = dataset_cfg("pascal_context", root, cache)
    first = load_real_split(cfg, "val", progress=False)
    files = sorted(p.name for p in cache.rglob("*.npy"))
    assert len(files) == 6  # sizes, image and four tasks

    built: list[list[str]] = []
    real_build = prepared._build

    def spy(layout, split, samples, canvas, missing, progress, workers):
        built.append(sorted(missing))
        return real_build(layout, split, samples, canvas, missing, progress, workers)

    monkeypatch.setattr(prepared, "_build", spy)
    again = load_real_split(cfg, "val", progress=False)
    assert built == [] and sorted(p.name for p in cache.rglob("*.npy")) == files
    assert torch.equal(again.arrays["sal"], first.arrays["sal"])

    changed = PASCAL_VAL[1]
    path = root / "sal_distill" / f"{changed}.png"
    sal = np.zeros(expected[changed]["sal"].shape, np.uint8)
    sal[:, :5] = 200
    Image.fromarray(sal, "L").save(path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    rebuilt = load_real_split(cfg, "val", progress=False)
    assert built == [["sal"]]  # only the array whose source changed
    i = PASCAL_VAL.index(changed)
    np.testing.assert_array_equal(_crop(rebuilt, i, "sal")[0], (sal >= 128).astype(np.uint8))
    now = sorted(p.name for p in cache.rglob("*.npy"))
    assert len(now) == 6 and now != files  # the stale array was replaced, not kept beside
    assert not list(cache.rglob("*.tmp"))


def test_a_corrupt_file_stops_loading_with_its_name(tmp_path, capsys):
    root = tmp_path / "NYUD_MT"
    make_nyud_tree(root)
    bad = root / "segmentation" / f"{NYUD_TRAIN[2]}.png"
    bad.write_bytes(b"not a png")
    cfg = dataset_cfg("nyud", root, tmp_path / "cache")
    with pytest.raises(UserError, match=str(bad).replace("\\", "\\\\")):
        load_real_split(cfg, "train", progress=False)
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    code = run_main(["method=decoders_only", "dataset=nyud", f"dataset.root={root}",
                     f"results_dir={tmp_path / 'results'}", *SMOKE])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(bad) in lines[0]


def test_verify_a_complete_tree_exits_0(pascal, nyud, tmp_path, capsys):
    root = pascal[0]
    proc = run_cli("benchmark.data", "verify", "dataset=pascal_context", f"dataset.root={root}",
                   "progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "train 6 images, val 4 images" in proc.stdout
    assert "complete" in proc.stdout and "Traceback" not in proc.stderr
    code = verify_main(["verify", "dataset=nyud", f"dataset.root={nyud[0]}", "progress=false"])
    out = capsys.readouterr().out
    assert code == 0 and "train 6 images, val 4 images" in out and "complete" in out


def test_verify_names_a_missing_and_a_corrupt_file_and_exits_2(tmp_path):
    root = tmp_path / "PASCAL_MT"
    make_pascal_tree(root)
    missing = root / "sal_distill" / f"{PASCAL_VAL[2]}.png"
    missing.unlink()
    corrupt = root / "JPEGImages" / f"{PASCAL_TRAIN[4]}.jpg"
    corrupt.write_bytes(b"\xff\xd8 truncated")
    proc = run_cli("benchmark.data", "verify", "dataset=pascal_context", f"dataset.root={root}",
                   "progress=false", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stdout.splitlines()
    assert any(str(missing) in line and "missing" in line for line in lines)
    assert any(str(corrupt) in line and "not a readable image" in line for line in lines)
    assert "PASCAL_MT.tgz" in proc.stdout and "Traceback" not in proc.stderr


def test_a_missing_root_is_named_and_exits_2(tmp_path, capsys):
    nowhere = tmp_path / "no" / "PASCAL_MT"
    assert verify_main(["verify", "dataset=pascal_context", f"dataset.root={nowhere}"]) == 2
    err = capsys.readouterr().err
    assert str(nowhere) in err and "JPEGImages" in err
    assert run_main(["method=full_ft", "dataset=nyud", f"dataset.root={nowhere}", *SMOKE]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(nowhere) in lines[0] and "gt_sets" in lines[0]
    assert run_main(["method=full_ft", "dataset=nyud", *SMOKE]) == 2
    assert "dataset.root=DIR" in capsys.readouterr().err


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
