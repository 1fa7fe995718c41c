"""Batches of real data (`benchmark.data.loader`, `benchmark.data.transforms`): resizing,
flips, rotations and zooms, and what they bring in from outside an image."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.data import IMAGENET_MEAN, IMAGENET_STD, BatchLoader, Split, load_real_split
from benchmark.data.transforms import (
    Augmentation,
    Geometry,
    normals_rotation,
    rotate_normals,
    sampling_grid,
)
from tests.real_trees import dataset_cfg


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
