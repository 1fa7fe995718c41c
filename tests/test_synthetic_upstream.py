"""The synthetic upstream classification set (`benchmark.data.synthetic.upstream`)."""

from __future__ import annotations

import hashlib

import numpy as np

from benchmark.data import synthetic as syn

SEED = 3


def test_upstream_set(tmp_path):
    images, labels = syn.render_upstream(SEED, "train", 100, 32, progress=False, workers=1)
    assert images.shape == (100, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (100,) and labels.dtype == np.int64
    assert set(labels.tolist()) == set(range(len(syn.UPSTREAM_CLASSES)))
    # Deterministic, split-size independent, cached.
    cached_x, cached_y = syn.load_upstream(SEED, "train", 12, 32, root=tmp_path, progress=False)
    np.testing.assert_array_equal(cached_x, images[:12])
    np.testing.assert_array_equal(cached_y, labels[:12])
    again_x, again_y = syn.load_upstream(SEED, "train", 12, 32, root=tmp_path, progress=False)
    np.testing.assert_array_equal(again_x, images[:12])
    val_x, _ = syn.render_upstream(SEED, "val", 12, 32, progress=False, workers=1)
    assert not {x.tobytes() for x in val_x} & {x.tobytes() for x in images}
    # A different distribution from the scenes: no ground/sky split, object near the centre.
    centre = images[:, 8:24, 8:24].astype(np.float32)
    assert centre.std() > 10


def test_upstream_labels_are_pinned():
    """The first upstream images and their classes, as rendered when `RENDER_VERSION` was 2:
    the shipped checkpoint was pre-trained on them, and render 3 changed the scenes alone."""
    rendered = [syn.render_upstream_image(SEED, "val", i, 32) for i in range(6)]
    assert [label for _, label in rendered] == [0, 4, 9, 3, 0, 7]
    digest = hashlib.sha256()
    for image, _ in rendered:
        digest.update(np.ascontiguousarray(image).tobytes())
    assert digest.hexdigest()[:16] == "491a54a98b4a15fd"
    assert syn.UPSTREAM_VERSION == 2

