"""The prepared cache of a real dataset (`benchmark.data.prepared`): reused, rebuilt when a
source changes, stopped by a corrupt file; `python -m benchmark.data verify`."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.data import load_real_split, prepared
from benchmark.data.__main__ import main as verify_main
from benchmark.errors import UserError
from benchmark.run import main as run_main
from tests.conftest import run_cli
from tests.real_trees import (
    NYUD_TRAIN,
    PASCAL_TRAIN,
    PASCAL_VAL,
    SMOKE,
    crop,
    dataset_cfg,
    make_nyud_tree,
    make_pascal_tree,
)


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
    np.testing.assert_array_equal(crop(rebuilt, i, "sal")[0], (sal >= 128).astype(np.uint8))
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
