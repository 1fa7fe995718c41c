"""The datasets the suite knows: what each provides (`dataset_info`) and, for the real ones,
their on-disk `Layout` (`benchmark.data.layout`), without loading any data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from benchmark.data.transforms import AUGMENT_MODES, NORMALS_Y
from benchmark.errors import UserError
from benchmark.tasks import FIXED_OUTPUTS, TASKS

if TYPE_CHECKING:
    from benchmark.config.parts import DataSpec

SYNTHETIC = "synthetic"
REAL_DATASETS = ("pascal_context", "nyud")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    tasks: list[str]
    num_outputs: dict[str, int]
    image_size: int
    eval_resolution: str


def trains_from_pretrained(name: str) -> bool:
    """Whether runs on dataset `name` start from pre-trained backbone weights (protocol
    §2.1): every dataset but the embedded synthetic one, whose runs may start from random
    weights (or from the upstream checkpoint of `benchmark.pretrain`)."""
    return name != SYNTHETIC


# The render version of the synthetic scenes before it entered the run key: records of those
# scenes keep their keys, and every later version is in the key (`content_version`).
KEYLESS_RENDER_VERSION = 2


def data_version(name: str) -> int | None:
    """The version of dataset `name`'s content: the synthetic scenes' render version (None
    for real datasets, whose files are the user's)."""
    if name != SYNTHETIC:
        return None
    from benchmark.data.synthetic import RENDER_VERSION

    return RENDER_VERSION


def content_version(name: str) -> dict[str, int]:
    """What of `data_version` enters the run key: nothing for real datasets and for the
    render version from before it was keyed."""
    version = data_version(name)
    return {} if version in (None, KEYLESS_RENDER_VERSION) else {"render_version": version}


def data_spec(spec: DataSpec | DictConfig) -> DataSpec:
    """`spec` as a `DataSpec` (a `dataset` config node parsed)."""
    from benchmark.config.parts import DataSpec  # the config layer imports the methods

    return DataSpec.of(spec)


def dataset_info(spec: DataSpec | DictConfig) -> DatasetInfo:
    """Tasks, output widths and image size of a `dataset` config, without loading data."""
    spec = data_spec(spec)
    tasks = list(spec.tasks)
    for task in tasks:
        if task not in TASKS:
            raise UserError(
                f"unknown task {task!r} in dataset.tasks; choose from {', '.join(TASKS)}"
            )
    if len(set(tasks)) != len(tasks) or not tasks:
        raise UserError(f"dataset.tasks must name distinct tasks, got {tasks}")
    if spec.name == SYNTHETIC:
        from benchmark.data.synthetic import NUM_SEMSEG_CLASSES

        num_classes = NUM_SEMSEG_CLASSES
        eval_resolution = str(spec.image_size)
    else:
        num_classes = spec.num_classes
        eval_resolution = str(spec.eval_resolution)
        if eval_resolution not in ("original", str(spec.image_size)):
            raise UserError(
                f"dataset.eval_resolution must be original or the input size "
                f"{spec.image_size}, got {eval_resolution!r}"
            )
        if spec.name in REAL_DATASETS:
            supported = layout_class(spec.name).supported_tasks
            for task in tasks:
                if task not in supported:
                    raise UserError(
                        f"dataset {spec.name} has no {task!r} labels; its tasks are "
                        f"{', '.join(supported)}"
                    )
            if spec.normals_y not in NORMALS_Y:
                raise UserError(
                    f"dataset.normals_y must be one of {', '.join(NORMALS_Y)}, "
                    f"got {spec.normals_y!r}"
                )
            if spec.augment not in AUGMENT_MODES:
                raise UserError(
                    f"dataset.augment must be one of {', '.join(AUGMENT_MODES)}, "
                    f"got {spec.augment!r}"
                )
            size = spec.image_size
            if not isinstance(size, int) or size < 32 or size % 32:
                raise UserError(f"dataset.image_size must be a multiple of 32, got {size}")
    outputs = {t: num_classes if t == "semseg" else FIXED_OUTPUTS[t] for t in tasks}
    return DatasetInfo(spec.name, tasks, outputs, int(spec.image_size), eval_resolution)


def layout_class(name: str):
    if name == "pascal_context":
        from benchmark.data.pascal_context import PascalContextLayout

        return PascalContextLayout
    if name == "nyud":
        from benchmark.data.nyud import NyudLayout

        return NyudLayout
    raise UserError(
        f"dataset {name!r} has no files to load; choose from {', '.join(REAL_DATASETS)}"
    )


def make_layout(spec: DataSpec | DictConfig):
    """The `Layout` of a real dataset config; names what to pass when the root is unset."""
    spec = data_spec(spec)
    cls = layout_class(spec.name)
    if not spec.root:
        raise UserError(
            f"dataset={spec.name} needs dataset.root=DIR, the folder of {cls.release} "
            f"(holding {cls.expected})"
        )
    return cls(str(spec.root), list(spec.tasks))


def check_dataset(spec: DataSpec | DictConfig) -> None:
    """Cheap checks before any run starts: a real dataset's root and split lists exist."""
    spec = data_spec(spec)
    if spec.name in REAL_DATASETS:
        make_layout(spec).check()
