"""What a real dataset looks like on disk, and reading one image's files.

A `Layout` knows the folders under a dataset root, the image ids of each split, which files
each array of an image is decoded from and where the data is published. A `Sample` decodes
the arrays of one image id; everything that goes wrong with a file raises `DataError`
naming it, which the loaders turn into a one-line error and `verify` into one line per file.

Arrays (one per task, plus `image`) are decoded at the image's own size:

| array | dtype | shape | no label |
|---|---|---|---|
| `image` | uint8 | (H, W, 3) RGB | |
| `semseg`, `human_parts`, `sal`, `edge` | uint8 | (H, W) class ids / 0-1 | 255 |
| `normals` | uint8 (H, W, 3) value v -> v*2/255-1, or float16 unit vectors | | (0, 0, 0) |
| `depth` | float32 | (H, W) metres | 0 |

The uint8 normals code (0, 0, 0) means (-1, -1, -1), which is not a unit vector, so no
genuine normal is ever stored as it; it marks pixels without normals ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.errors import UserError


class DataError(Exception):
    """A file of the dataset is missing or cannot be decoded."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem

    def __reduce__(self):  # raised in worker processes, re-raised in the parent
        return (type(self), (self.path, self.problem))


@dataclass(frozen=True)
class ArraySpec:
    """How one array is stored on the canvas of the prepared cache."""

    dtype: type
    channels: int  # 0: (H, W)
    fill: float  # value outside the image (no label)


ARRAYS: dict[str, ArraySpec] = {
    "image": ArraySpec(np.uint8, 3, 0),
    "semseg": ArraySpec(np.uint8, 0, 255),
    "human_parts": ArraySpec(np.uint8, 0, 255),
    "sal": ArraySpec(np.uint8, 0, 255),
    "edge": ArraySpec(np.uint8, 0, 255),
    "normals": ArraySpec(np.uint8, 3, 0),
    "depth": ArraySpec(np.float32, 0, 0),
}


class Sample:
    """The files of one image id; `read(name)` decodes one array, `sources(name)` lists the
    files it depends on (for the cache key). Subclasses define `_<name>` and `_sources_<name>`.
    """

    def __init__(self, layout: Layout, image_id: str):
        self.layout = layout
        self.id = image_id
        self._size: tuple[int, int] | None = None

    def read(self, name: str) -> np.ndarray:
        return getattr(self, f"_{name}")()

    def sources(self, name: str) -> list[Path]:
        return getattr(self, f"_sources_{name}")()

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image, from its header."""
        if self._size is None:
            self._size = image_size(self.layout.image_path(self.id))
        return self._size

    def _path(self, folder: str, suffix: str) -> Path:
        """This image's file in `folder` (relative to the root), named `<id><suffix>`."""
        return self.layout.root / folder / f"{self.id}{suffix}"

    def _image(self) -> np.ndarray:
        image = read_image(self.layout.image_path(self.id))
        self._size = image.shape[:2]
        return image

    def _sources_image(self) -> list[Path]:
        return [self.layout.image_path(self.id)]

    def check_size(self, array: np.ndarray, path: Path) -> np.ndarray:
        if tuple(array.shape[:2]) != tuple(self.size):
            h, w = array.shape[:2]
            raise DataError(
                path, f"size {w}x{h} differs from the image's {self.size[1]}x{self.size[0]}"
            )
        return array


class Layout:
    """A dataset root in one published layout. Subclasses fill in the class attributes."""

    name: str = ""
    release: str = ""  # where the data is published
    expected: str = ""  # what should be under the root, for error messages
    image_dir: str = ""
    image_suffix: str = ".jpg"
    sample_class: type[Sample] = Sample
    splits: tuple[str, ...] = ("train", "val")
    supported_tasks: tuple[str, ...] = ()
    array_specs: dict[str, ArraySpec] = ARRAYS

    def __init__(self, root: str | Path, tasks: Sequence[str]):
        self.root = Path(root).expanduser()
        self.tasks = tuple(tasks)

    def __reduce__(self):  # picklable for worker processes
        return (type(self), (self.root, self.tasks))

    # -- what subclasses provide ---------------------------------------------------------------
    def split_file(self, split: str) -> Path:
        raise NotImplementedError

    def task_folders(self, task: str) -> dict[str, str]:
        """Folder (relative to the root) -> what it holds, for one task."""
        raise NotImplementedError

    def folders(self) -> dict[str, str]:
        """The folders the configured tasks need, images first."""
        out = {self.image_dir: "images"}
        for task in self.tasks:
            out.update(self.task_folders(task))
        return out

    # -- shared ----------------------------------------------------------------------------------
    @property
    def array_names(self) -> list[str]:
        return ["image", *self.tasks]

    def image_path(self, image_id: str) -> Path:
        return self.root / self.image_dir / f"{image_id}{self.image_suffix}"

    def sample(self, image_id: str) -> Sample:
        return self.sample_class(self, image_id)

    def ids(self, split: str) -> list[str]:
        path = self.split_file(split)
        try:
            lines = path.read_text().split()
        except FileNotFoundError:
            raise DataError(path, f"missing (the list of {split} image ids)") from None
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(path, f"unreadable: {err}") from None
        return lines

    def where(self) -> str:
        return f"{self.name} data at {self.root}"

    def check(self) -> None:
        """Cheap checks before any run: the root and the split lists exist."""
        if not self.root.exists():
            raise UserError(
                f"dataset.root={self.root} does not exist; expected there {self.expected} "
                f"({self.release})"
            )
        if not self.root.is_dir():
            raise UserError(
                f"dataset.root={self.root} is not a directory; expected {self.expected}"
            )
        for split in self.splits:
            path = self.split_file(split)
            if not path.is_file():
                raise UserError(
                    f"{path} is missing: dataset.root={self.root} does not hold {self.expected} "
                    f"({self.release}); `python -m benchmark.data verify` lists every problem"
                )
        for folder in self.folders():
            if not (self.root / folder).is_dir():
                raise UserError(
                    f"{self.root / folder} is missing: dataset.root={self.root} does not hold "
                    f"{self.expected} ({self.release})"
                )


# -- file readers ------------------------------------------------------------------------------

def _require(path: Path) -> None:
    if not path.is_file():
        raise DataError(path, "missing")


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from an image header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    _require(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(path, f"not a readable image ({_reason(err)})") from None
    return height, width


def _open_image(path: Path):
    from PIL import Image

    _require(path)
    try:
        img = Image.open(path)
        img.load()
    except Exception as err:  # PIL raises many kinds for damaged files
        raise DataError(path, f"not a readable image ({_reason(err)})") from None
    return img


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3)."""
    img = _open_image(path)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_png_grey(path: Path) -> np.ndarray:
    """A single-channel PNG as uint8 (H, W): the palette indices of a palette image, the
    values of a grey one."""
    img = _open_image(path)
    if img.mode in ("L", "P"):
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("I", "I;16", "I;16B"):
        values = np.asarray(img)
        if values.min() < 0 or values.max() > 255:
            raise DataError(path, f"values {values.min()}..{values.max()} do not fit 0..255")
        return values.astype(np.uint8)
    raise DataError(path, f"expected a single-channel PNG, found mode {img.mode}")


def read_png_rgb(path: Path) -> np.ndarray:
    img = _open_image(path)
    if img.mode not in ("RGB", "RGBA"):
        raise DataError(path, f"expected an RGB PNG, found mode {img.mode}")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_mat(path: Path) -> dict:
    from scipy.io import loadmat

    _require(path)
    try:
        return loadmat(str(path))
    except Exception as err:  # scipy raises ValueError, TypeError, OSError... for damaged files
        raise DataError(path, f"not a readable MATLAB file ({_reason(err)})") from None


def read_npy(path: Path) -> np.ndarray:
    _require(path)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:
        raise DataError(path, f"not a readable .npy array ({_reason(err)})") from None


def _reason(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:120]
