"""The grid ceiling of segmentation (`benchmark.metrics.ceiling`) and its command."""

from __future__ import annotations

import pytest
import torch

from benchmark.data.__main__ import main as data_main
from benchmark.metrics.ceiling import grid_ceiling


def _square_image() -> torch.Tensor:
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :2, :2] = 1  # a 2x2 object in the corner
    return labels


def test_an_object_smaller_than_a_cell_is_lost_and_one_on_the_grid_is_kept():
    labels = _square_image()
    # Stride 8: one cell, 4 of its 64 pixels are the object, so the background wins
    # everywhere: IoU 60/64 and 0.
    coarse = grid_ceiling(labels, 2, stride=8)
    assert coarse.per_class_iou() == pytest.approx([100 * 60 / 64, 0.0])
    assert coarse.compute()["miou"] == pytest.approx(46.875)
    # Stride 2: the object fills one cell; bilinear upsampling (half-pixel centres) keeps
    # the cell's own two pixels on each axis above one half and the next ones below.
    assert grid_ceiling(labels, 2, stride=2).compute()["miou"] == pytest.approx(100.0)


def test_ignored_pixels_neither_vote_nor_count():
    labels = _square_image()
    labels[0, 2:, :] = 255  # everything below the object unlabelled
    # The one stride-8 cell now holds 4 object and 12 background pixels among its labelled
    # ones: the background still wins, over the 16 labelled pixels only.
    meter = grid_ceiling(labels, 2, stride=8)
    assert meter.per_class_iou() == pytest.approx([100 * 12 / 16, 0.0])
    unlabelled = torch.full((2, 8, 8), 255, dtype=torch.long)
    assert int(grid_ceiling(unlabelled, 2, stride=4).confusion_matrix().sum()) == 0


def test_a_stride_that_does_not_divide_the_size_is_refused():
    with pytest.raises(ValueError, match="divide"):
        grid_ceiling(_square_image(), 2, stride=3)


def test_the_ceiling_command(tmp_path, capsys):
    args = ["ceiling", "stride=8", "dataset.image_size=32", "dataset.train_size=16",
            "dataset.val_size=6", f"dataset.cache_dir={tmp_path}", "progress=false"]
    assert data_main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "stride-8 ceiling on 6 validation images at 32 px" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["semseg", "human_parts", "sal"]
    assert data_main(["ceiling", "stride=5", "dataset.image_size=32"]) == 2
    assert "divisor of dataset.image_size=32" in capsys.readouterr().err
    assert data_main(["ceiling", "dataset=nyud"]) == 2
    assert "synthetic" in capsys.readouterr().err
