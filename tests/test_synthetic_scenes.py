"""The embedded synthetic benchmark's scenes (`benchmark.data.synthetic`): label definitions,
determinism, rendering in a process pool."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from benchmark.data import synthetic as syn

SEED = 3


@pytest.fixture(scope="module")
def split32():
    return syn.render_split(SEED, "train", 24, 32, progress=False, workers=1)


@pytest.fixture(scope="module")
def scenes48():
    return [syn.render_scene(SEED, "val", i, 48) for i in range(8)]


def _pixel_rays(K: np.ndarray, n: int) -> np.ndarray:
    u, v = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5)
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)
    return pix @ np.linalg.inv(K).T  # (n, n, 3), z = 1


def test_class_lists():
    assert syn.SEMSEG_CLASSES[0] == "background" and syn.SEMSEG_CLASSES[1] == "figure"
    assert syn.NUM_SEMSEG_CLASSES == len(syn.SEMSEG_CLASSES) == 2 + len(syn.SHAPE_CLASSES)
    assert 5 <= len(syn.SHAPE_CLASSES) <= 7
    assert len(set(syn.UPSTREAM_CLASSES)) == len(syn.UPSTREAM_CLASSES)
    assert set(syn.SHAPE_CLASSES) | {"figure"} < set(syn.UPSTREAM_CLASSES)
    extras = len(syn.UPSTREAM_CLASSES) - len(syn.SHAPE_CLASSES) - 1
    assert 2 <= extras <= 4
    assert syn.TASK_ARRAYS == ("image", "semseg", "human_parts", "sal", "normals", "depth", "edge")


def test_shapes_and_dtypes(split32):
    n = 24
    assert set(split32) == set(syn.TASK_ARRAYS)
    assert split32["image"].shape == (n, 32, 32, 3) and split32["image"].dtype == np.uint8
    for key in ("semseg", "human_parts", "sal", "edge"):
        assert split32[key].shape == (n, 32, 32) and split32[key].dtype == np.uint8, key
    assert split32["normals"].shape == (n, 32, 32, 3)
    assert split32["normals"].dtype in (np.float16, np.float32)
    assert split32["depth"].shape == (n, 32, 32) and split32["depth"].dtype == np.float32
    scene = syn.render_scene(SEED, "train", 0, 32)
    assert scene["normals"].dtype == np.float32 and scene["depth"].dtype == np.float32


def test_scene_is_deterministic_and_independent_of_split_size(split32):
    a = syn.render_scene(SEED, "train", 5, 32)
    b = syn.render_scene(SEED, "train", 5, 32)
    small = syn.render_split(SEED, "train", 4, 32, progress=False, workers=1)
    for key in syn.TASK_ARRAYS:
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a[key].astype(split32[key].dtype), split32[key][5])
        np.testing.assert_array_equal(small[key], split32[key][:4])
    other = syn.render_scene(SEED + 1, "train", 5, 32)
    assert not np.array_equal(a["image"], other["image"])


def test_process_pool_matches_serial(split32):
    serial = syn.render_split(SEED, "train", 16, 32, progress=False, workers=1)
    pooled = syn.render_split(SEED, "train", 16, 32, progress=False, workers=2)
    for key in syn.TASK_ARRAYS:
        np.testing.assert_array_equal(serial[key], pooled[key])
        np.testing.assert_array_equal(serial[key], split32[key][:16])


def test_train_and_val_are_disjoint(split32):
    val = syn.render_split(SEED, "val", 24, 32, progress=False, workers=1)
    train_images = {img.tobytes() for img in split32["image"]}
    assert len(train_images) == 24
    assert not train_images & {img.tobytes() for img in val["image"]}
    with pytest.raises(ValueError):
        syn.render_scene(SEED, "holdout", 0, 32)


def test_normals_unit_where_depth_and_facing_the_camera(scenes48):
    for i, scene in enumerate(scenes48):
        normals, depth = scene["normals"], scene["depth"]
        valid = depth > 0
        assert valid.any() and (~valid).any()  # ground and sky both visible
        length = np.linalg.norm(normals, axis=-1)
        np.testing.assert_allclose(length[valid], 1.0, atol=1e-3)
        assert np.all(normals[~valid] == 0)
        rays = _pixel_rays(syn.camera_intrinsics(SEED, "val", i, 48), 48)
        facing = np.einsum("hwc,hwc->hw", normals, rays)
        assert np.all(facing[valid] < 0)
        # Not an accident of the frame: both left- and right-facing normals occur.
        assert (normals[valid][:, 0] > 0.2).any() and (normals[valid][:, 0] < -0.2).any()


def test_split_normals_unit_length(split32):
    normals = split32["normals"].astype(np.float32)
    valid = split32["depth"] > 0
    np.testing.assert_allclose(np.linalg.norm(normals[valid], axis=-1), 1.0, atol=2e-3)
    assert np.all(normals[~valid] == 0)


def test_ground_depth_and_normals_describe_one_plane(scenes48):
    """Back-projected ground pixels lie on the plane their (shared) normal defines."""
    for i, scene in enumerate(scenes48):
        ground = (scene["semseg"] == 0) & (scene["depth"] > 0)
        assert ground.sum() > 50
        n = scene["normals"][ground].astype(np.float64)
        np.testing.assert_allclose(n, np.broadcast_to(n[0], n.shape), atol=1e-5)
        assert n[0, 1] < -0.9  # the ground faces up (y points down in the camera frame)
        rays = _pixel_rays(syn.camera_intrinsics(SEED, "val", i, 48), 48)
        points = rays[ground] * scene["depth"][ground, None]
        offset = points @ n[0]
        assert 1.1 < -offset.mean() < 2.1  # the camera height
        np.testing.assert_allclose(offset, offset.mean(), rtol=1e-4)
        # Depth is the camera-frame z: it grows towards the horizon on the ground.
        rows = np.nonzero(ground.any(axis=1))[0]
        top, bottom = rows.min(), rows.max()
        far, near = scene["depth"][top][ground[top]], scene["depth"][bottom][ground[bottom]]
        assert far.mean() > near.mean()


def test_depth_range(split32):
    depth = split32["depth"]
    assert depth.min() == 0
    assert depth[depth > 0].min() > 0.5 and depth.max() < 35.0
    sky = depth == 0
    assert np.all(split32["semseg"][sky] == 0) and np.all(split32["sal"][sky] == 0)


def test_semseg_and_human_parts(split32):
    semseg, parts = split32["semseg"], split32["human_parts"]
    assert semseg.max() < syn.NUM_SEMSEG_CLASSES
    assert len(np.unique(semseg)) >= 6
    with_figure = 0
    for sem, hp in zip(semseg, parts, strict=True):
        figure = sem == syn.FIGURE_CLASS
        if not figure.any():
            assert np.all(hp == 255)
            continue
        with_figure += 1
        assert hp.max() <= 6
        assert np.array_equal(hp > 0, figure)
    assert 0.3 <= with_figure / len(semseg) <= 0.9
    visible = parts[parts != 255]
    assert set(np.unique(visible)) == set(range(7))


def test_figures_appear_in_a_plausible_share():
    semseg = syn.render_split(SEED, "val", 60, 24, progress=False, workers=1)["semseg"]
    share = (semseg == syn.FIGURE_CLASS).any(axis=(1, 2)).mean()
    assert 0.45 <= share <= 0.75


def test_saliency_is_near_objects_only(split32):
    semseg, sal, depth = split32["semseg"], split32["sal"], split32["depth"]
    assert set(np.unique(sal)) == {0, 1}
    assert np.all(semseg[sal == 1] != 0)
    objects = semseg != 0
    # Related to semseg but not a function of it: many object pixels are not salient ...
    assert (objects & (sal == 0)).sum() > 0.1 * objects.sum()
    assert (sal == 1).sum() > 0.1 * objects.sum()
    # ... and salient pixels are the near ones.
    assert np.median(depth[sal == 1]) < np.median(depth[objects & (sal == 0)])


def test_edges_follow_instance_boundaries(split32):
    semseg, depth, edge = split32["semseg"], split32["depth"], split32["edge"]
    assert set(np.unique(edge)) == {0, 1}
    # Where the class (or sky/ground) changes between 4-neighbours, both pixels are edges.
    region = semseg.astype(np.int32) * 2 + (depth > 0)
    for axis in (1, 2):
        a = np.moveaxis(region, axis, -1)
        e = np.moveaxis(edge, axis, -1)
        change = a[..., 1:] != a[..., :-1]
        assert np.all(e[..., 1:][change] == 1) and np.all(e[..., :-1][change] == 1)
    # Edges are thin: a pixel is only an edge next to a change of instance.
    assert 0.02 < edge.mean() < 0.3
    interior = np.ones_like(edge, dtype=bool)
    for axis in (1, 2):
        a = np.moveaxis(region, axis, -1)
        same = np.moveaxis(interior, axis, -1)
        same[..., 1:] &= a[..., 1:] == a[..., :-1]
        same[..., :-1] &= a[..., 1:] == a[..., :-1]
    # Pixels inside a class region are edges only at boundaries of same-class instances.
    assert edge[interior].mean() < 0.1


def test_tasks_are_not_trivial_functions_of_each_other(split32):
    semseg, sal, edge, depth = (split32[k] for k in ("semseg", "sal", "edge", "depth"))
    assert not np.array_equal(sal, (semseg != 0).astype(np.uint8))
    # Depth is not determined by the class: it spreads widely inside every class.
    for c in np.unique(semseg):
        d = depth[(semseg == c) & (depth > 0)]
        if d.size > 20:
            assert d.max() - d.min() > 1.0
    # Every shape class appears in many colours: the colour does not give away the class.
    image = split32["image"].astype(np.float32)
    for c in range(2, syn.NUM_SEMSEG_CLASSES):
        pix = image[semseg == c]
        if len(pix) > 50:
            assert pix.std(axis=0).mean() > 20
    assert edge.sum() > 0


def test_render_at_128_pixels():
    scene = syn.render_scene(SEED, "train", 1, 128)
    assert scene["image"].shape == (128, 128, 3)
    assert scene["normals"].shape == (128, 128, 3)
    small = syn.render_scene(SEED, "train", 1, 32)
    # The same scene at both sizes: the same classes appear.
    assert set(np.unique(small["semseg"])) <= set(np.unique(scene["semseg"]))


def test_label_maps_are_pinned():
    """The class maps of two scenes, pinned by digest: a change to the renderer that moves
    any label must come with a new `RENDER_VERSION` (the cache files are named by it)."""

    def digest(scene):
        h = hashlib.sha256()
        for key in ("semseg", "human_parts", "sal", "edge"):
            h.update(scene[key].tobytes())
        return h.hexdigest()[:16]

    assert syn.RENDER_VERSION == 3
    assert digest(syn.render_scene(SEED, "train", 0, 32)) == "3b51e53a3114e7a2"
    assert digest(syn.render_scene(SEED, "val", 7, 48)) == "d96c3cec114ed3c2"



def _sampled_scenes(count: int, n: int = 32):
    from benchmark.data.synthetic.camera import _camera_from, _streams
    from benchmark.data.synthetic.sampling import _sample_scene

    scenes = []
    for i in range(count):
        cam_ss, scene_ss, _ = _streams(0, SEED, "train", i)
        cam = _camera_from(cam_ss, n)
        scenes.append(_sample_scene(np.random.default_rng(scene_ss), cam))
    return scenes


def test_each_shape_class_wears_its_own_hue_band_in_most_instances():
    """Render 3: CLASS_HUE_SHARE of a class's shapes take its hue band; the rest any hue, of
    which the band holds its width's share. So the share of class k's shapes inside band k
    is about SHARE + (1 - SHARE) * 2 * SPREAD, and band k holds few shapes of other classes."""
    import colorsys

    from benchmark.data.synthetic.constants import CLASS_HUE_SHARE, CLASS_HUE_SPREAD

    n = len(syn.SHAPE_CLASSES)
    inside, total, foreign = np.zeros(n), np.zeros(n), []
    for sc in _sampled_scenes(150):
        for cls, material in zip(sc.classes[2:], sc.materials[2:], strict=True):
            if cls == syn.FIGURE_CLASS:
                continue
            k = cls - 2
            hue = colorsys.rgb_to_hsv(*material.colours[0])[0]
            dist = [min(abs(hue - j / n), 1 - abs(hue - j / n)) for j in range(n)]
            total[k] += 1
            inside[k] += dist[k] <= CLASS_HUE_SPREAD + 1e-9
            foreign += [d <= CLASS_HUE_SPREAD + 1e-9 for j, d in enumerate(dist) if j != k]
    expected = CLASS_HUE_SHARE + (1 - CLASS_HUE_SHARE) * 2 * CLASS_HUE_SPREAD
    assert total.min() >= 50
    assert np.all(np.abs(inside / total - expected) < 0.12), inside / total
    assert np.mean(foreign) < 0.15


def test_scene_figures_have_thicker_limbs_than_upstream_ones():
    from benchmark.data.synthetic.constants import LIMB_SCALE
    from benchmark.data.synthetic.objects import _make_figure

    thin = _make_figure(np.random.default_rng(0), 1.8)
    thick = _make_figure(np.random.default_rng(0), 1.8, LIMB_SCALE)
    assert LIMB_SCALE > 1
    upper_arm = next(p for p in thin if p.part == 3)
    assert upper_arm.p[1] == pytest.approx(0.048 * 1.8)  # the upstream proportions
    for a, b in zip(thin, thick, strict=True):
        assert a.part == b.part
        if a.part >= 3:  # limbs: capsules (end point, radius)
            assert b.p[1] == pytest.approx(a.p[1] * LIMB_SCALE)
        else:  # head and torso keep their size
            assert b.br == pytest.approx(a.br)


def test_objects_stand_in_their_distance_ranges_and_the_near_ones_are_salient():
    from benchmark.data.synthetic.constants import (
        FIGURE_DISTANCES,
        SALIENT_DISTANCE,
        SHAPE_DISTANCES,
    )

    for sc in _sampled_scenes(60):
        by_instance: dict[int, list] = {}
        for p in sc.prims:
            by_instance.setdefault(p.inst, []).append(p)
        for inst, prims in by_instance.items():
            cls = sc.classes[inst]
            if cls == syn.FIGURE_CLASS:
                foot = next(p for p in prims if p.part == 2).c  # the torso stands over it
                lo, hi = FIGURE_DISTANCES
            else:
                foot = np.mean([p.bc for p in prims], axis=0)
                lo, hi = SHAPE_DISTANCES
            d = float(np.hypot(foot[0], foot[2]))
            assert lo - 0.5 < d < hi + 0.5
            if abs(d - SALIENT_DISTANCE) > 0.5:
                assert sc.salient[inst] == (d < SALIENT_DISTANCE)
