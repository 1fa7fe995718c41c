"""Whole synthetic splits cached as .npz files (`benchmark.data.synthetic.store`): written once,
read back, rendered again when unreadable."""

from __future__ import annotations

import numpy as np

from benchmark.data import synthetic as syn
from benchmark.data.synthetic import store

SEED = 3


def test_cache_round_trip_and_corrupt_file(tmp_path, monkeypatch):
    first = syn.load_split(SEED, "train", 8, 32, root=tmp_path, progress=False)
    files = list((tmp_path / "synthetic").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    assert str(syn.RENDER_VERSION) in files[0].name

    def no_render(*args, **kwargs):
        raise AssertionError("rendered although cached")

    with monkeypatch.context() as m:
        m.setattr(store, "_render_many", no_render)
        again = syn.load_split(SEED, "train", 8, 32, root=tmp_path, progress=False)
    direct = syn.render_split(SEED, "train", 8, 32, progress=False, workers=1)
    for key in syn.TASK_ARRAYS:
        np.testing.assert_array_equal(first[key], again[key])
        np.testing.assert_array_equal(first[key], direct[key])

    for garbage in (b"not a zip file", files[0].read_bytes()[:500]):
        files[0].write_bytes(garbage)
        fixed = syn.load_split(SEED, "train", 8, 32, root=tmp_path, progress=False)
        for key in syn.TASK_ARRAYS:
            np.testing.assert_array_equal(first[key], fixed[key])
    assert [f.name for f in (tmp_path / "synthetic").iterdir()] == [files[0].name]
    # Another size is another cache entry.
    syn.load_split(SEED, "train", 4, 32, root=tmp_path, progress=False)
    assert len(list((tmp_path / "synthetic").iterdir())) == 2
