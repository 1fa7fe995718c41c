"""PASCAL-Context multi-task in the layout of the PASCAL multi-task release (protocol §1.1).

Under the root (`PASCAL_MT.tgz`, published by the ASTMT authors):

    JPEGImages/<id>.jpg                     images
    ImageSets/Context/{train,val}.txt       4,998 / 5,105 ids
    semseg/VOC12/<id>.png                   21 classes, 255 void (else semseg/pascal-context/)
    human_parts/<id>.mat                    the raw PASCAL-Part annotation (struct `anno`)
    sal_distill/<id>.png                    grey, /255, salient above 0.5
    normals_distill/<id>.png                RGB, v -> v*2/255-1
    pascal-context/trainval/<id>.mat        `LabelMap`, the 459-class Context labels

Labels, as protocol §1.1 defines them:

- `human_parts`: zeros (background) over the image; every *person* (`class_ind` 15) that has
  parts writes each part's group id (1 head, 2 torso, 3 upper arm, 4 lower arm, 5 upper leg,
  6 lower leg) into the part's mask, later parts over earlier ones. Parts of other classes
  never count. An image without a single person part is all 255 (left out of the score).
- `normals`: ground truth only where the Context `LabelMap` holds one of the 170 classes of
  `pascal_context_normals_valid_classes.json` (the classes the distilled normals are valid
  for); elsewhere no label.
- `edge` (optional): 1 on every pixel with a 4-neighbour of another `LabelMap` class (both
  sides of each boundary), else 0.
"""

from __future__ import annotations

import json
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from benchmark.data.labels import boundaries
from benchmark.data.layout import (
    DataError,
    Layout,
    Sample,
    read_mat,
    read_png_grey,
    read_png_rgb,
)

PERSON_CLASS = 15  # VOC class index of person
NUM_CLASSES = 21
# protocol §1.1: PASCAL-Part part names -> the six human-part groups.
PART_GROUPS: dict[str, int] = {
    **dict.fromkeys(
        ("hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye", "mouth", "nose"), 1
    ),
    **dict.fromkeys(("neck", "torso"), 2),
    **dict.fromkeys(("luarm", "ruarm"), 3),
    **dict.fromkeys(("llarm", "rlarm", "lhand", "rhand"), 4),
    **dict.fromkeys(("luleg", "ruleg"), 5),
    **dict.fromkeys(("llleg", "rlleg", "lfoot", "rfoot"), 6),
}
VALID_CLASSES_FILE = Path(__file__).with_name("pascal_context_normals_valid_classes.json")


@lru_cache(maxsize=1)
def normals_valid_classes() -> np.ndarray:
    """The Context class ids on which the distilled normals are ground truth (protocol §1.1)."""
    return np.array(sorted(json.loads(VALID_CLASSES_FILE.read_text())["valid_ids"]))


def human_parts_map(mat: dict, shape: tuple[int, int], path: Path) -> np.ndarray:
    """The six-group part map of a PASCAL-Part `anno` struct (protocol §1.1)."""
    try:
        objects = mat["anno"][0, 0]["objects"]
    except (KeyError, IndexError, ValueError) as err:
        raise DataError(path, f"no anno.objects struct ({err})") from None
    out = np.zeros(shape, dtype=np.uint8)
    found = False
    for obj in np.asarray(objects).ravel():
        try:
            class_ind = int(np.asarray(obj["class_ind"]).ravel()[0])
            parts = np.asarray(obj["parts"])
        except (KeyError, IndexError, ValueError, TypeError) as err:
            raise DataError(path, f"an object without class_ind or parts ({err})") from None
        if class_ind != PERSON_CLASS or parts.size == 0 or parts.dtype.names is None:
            continue
        for part in parts.ravel():
            name = str(np.asarray(part["part_name"]).ravel()[0])
            if name not in PART_GROUPS:
                raise DataError(path, f"unknown person part {name!r}")
            mask = np.asarray(part["mask"])
            if mask.shape != shape:
                raise DataError(
                    path, f"part mask of size {mask.shape[1]}x{mask.shape[0]} differs from "
                    f"the image's {shape[1]}x{shape[0]}"
                )
            out[mask > 0] = PART_GROUPS[name]
            found = True
    if not found:
        out[:] = 255
    return out


class PascalSample(Sample):
    layout: PascalContextLayout

    def _semseg_path(self) -> Path:
        voc = self._path("semseg/VOC12", ".png")
        return voc if voc.is_file() else self._path("semseg/pascal-context", ".png")

    def _sources_semseg(self) -> list[Path]:
        return [self._semseg_path()]

    def _semseg(self) -> np.ndarray:
        path = self._semseg_path()
        if not path.is_file():
            raise DataError(self._path("semseg/VOC12", ".png"),
                            "missing (and no semseg/pascal-context fallback)")
        labels = self.check_size(read_png_grey(path), path)
        bad = (labels >= NUM_CLASSES) & (labels != 255)
        if bad.any():
            raise DataError(path, f"class id {int(labels[bad][0])} outside 0..20 and 255")
        return labels

    def _sources_human_parts(self) -> list[Path]:
        return [self._path("human_parts", ".mat")]

    def _human_parts(self) -> np.ndarray:
        path = self._path("human_parts", ".mat")
        return human_parts_map(read_mat(path), self.size, path)

    def _sources_sal(self) -> list[Path]:
        return [self._path("sal_distill", ".png")]

    def _sal(self) -> np.ndarray:
        path = self._path("sal_distill", ".png")
        grey = self.check_size(read_png_grey(path), path)
        return (grey > 127.5).astype(np.uint8)  # v / 255 > 0.5

    def _label_map_path(self) -> Path:
        return self._path("pascal-context/trainval", ".mat")

    @cached_property
    def label_map(self) -> np.ndarray:
        path = self._label_map_path()
        mat = read_mat(path)
        if "LabelMap" not in mat:
            raise DataError(path, "no LabelMap variable")
        return self.check_size(np.asarray(mat["LabelMap"]), path)

    def _sources_normals(self) -> list[Path]:
        return [self._path("normals_distill", ".png"), self._label_map_path()]

    def _normals(self) -> np.ndarray:
        path = self._path("normals_distill", ".png")
        normals = self.check_size(read_png_rgb(path), path)
        valid = np.isin(self.label_map, normals_valid_classes())
        return np.where(valid[..., None], normals, 0).astype(np.uint8)

    def _sources_edge(self) -> list[Path]:
        return [self._label_map_path()]

    def _edge(self) -> np.ndarray:
        return boundaries(self.label_map)


class PascalContextLayout(Layout):
    name = "pascal_context"
    release = (
        "the PASCAL multi-task release PASCAL_MT.tgz, published by the ASTMT authors "
        "(Maninis et al., CVPR 2019)"
    )
    expected = (
        "JPEGImages/, ImageSets/Context/{train,val}.txt, semseg/VOC12/ (or "
        "semseg/pascal-context/), human_parts/, sal_distill/, normals_distill/ and "
        "pascal-context/trainval/"
    )
    image_dir = "JPEGImages"
    sample_class = PascalSample
    supported_tasks = ("semseg", "human_parts", "sal", "normals", "edge")

    def split_file(self, split: str) -> Path:
        return self.root / "ImageSets" / "Context" / f"{split}.txt"

    def task_folders(self, task: str) -> dict[str, str]:
        context = {"pascal-context/trainval": "Context LabelMap .mat files"}
        return {
            "semseg": {"semseg": "class PNGs in VOC12/ or pascal-context/"},
            "human_parts": {"human_parts": "PASCAL-Part .mat annotations"},
            "sal": {"sal_distill": "saliency PNGs"},
            "normals": {"normals_distill": "normals PNGs", **context},
            "edge": context,
        }[task]
