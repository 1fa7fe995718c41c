"""Small generated trees in the public releases' layouts of PASCAL-Context and NYUD-v2,
with the labels every file was written with, for the real-data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

from benchmark.run import compose_all

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


def crop(split, i, name):
    h, w = (int(v) for v in split.sizes[i])
    return split.arrays[name][i, :h, :w].numpy(), split.arrays[name][i].numpy()
