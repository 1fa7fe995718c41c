"""Datasets: what each provides (`dataset_info`), loading it, and batching it.

Every dataset arrives as arrays per split (uint8 images and labels, float normals and
depth); `BatchLoader` gathers shuffled batches from them, applies the train-time
augmentation on the whole batch, on the device, and converts it to the label formats of
`benchmark.tasks`. The trainer never needs to know which dataset it has:

- `synthetic` (protocol §1.3): rendered at the model's input size; the only augmentation is a
  horizontal flip (negating the x component of normals).
- `pascal_context` (protocol §1.1) and `nyud` (protocol §1.2): decoded once from `dataset.root` into
  a memory-mapped cache (`benchmark.data.prepared`), images of varying size on one canvas
  per split. Batches are resized to `dataset.image_size` square, and training batches are
  flipped, rotated and scaled on the way (`benchmark.data.transforms`). With
  `dataset.eval_resolution=original` the predictions are resized back to each image's own
  size and scored there; otherwise the labels are resized (nearest) to the input size.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from benchmark.data.transforms import (
    AUGMENT_MODES,
    NORMALS_Y,
    Augmentation,
    Geometry,
    nearest_indices,
    normals_rotation,
    official_fill,
    rotate_normals,
    sample_image,
    sample_normals_cubic,
    sampling_grid,
)
from benchmark.errors import UserError
from benchmark.tasks import FIXED_OUTPUTS, IGNORE_INDEX, TASKS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REAL_DATASETS = ("pascal_context", "nyud")
CLASS_MAP_TASKS = ("semseg", "human_parts", "sal", "edge")  # int64 labels, 255 = no label


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    tasks: list[str]
    num_outputs: dict[str, int]
    image_size: int
    eval_resolution: str


def dataset_info(cfg: DictConfig) -> DatasetInfo:
    """Tasks, output widths and image size of a `dataset` config, without loading data."""
    tasks = list(cfg.tasks)
    for task in tasks:
        if task not in TASKS:
            raise UserError(
                f"unknown task {task!r} in dataset.tasks; choose from {', '.join(TASKS)}"
            )
    if len(set(tasks)) != len(tasks) or not tasks:
        raise UserError(f"dataset.tasks must name distinct tasks, got {tasks}")
    if cfg.name == "synthetic":
        from benchmark.data.synthetic import NUM_SEMSEG_CLASSES

        num_classes = NUM_SEMSEG_CLASSES
        eval_resolution = str(cfg.image_size)
    else:
        num_classes = cfg.num_classes
        eval_resolution = str(cfg.eval_resolution)
        if eval_resolution not in ("original", str(cfg.image_size)):
            raise UserError(
                f"dataset.eval_resolution must be original or the input size "
                f"{cfg.image_size}, got {eval_resolution!r}"
            )
        if cfg.name in REAL_DATASETS:
            supported = layout_class(cfg.name).supported_tasks
            for task in tasks:
                if task not in supported:
                    raise UserError(
                        f"dataset {cfg.name} has no {task!r} labels; its tasks are "
                        f"{', '.join(supported)}"
                    )
            if cfg.get("normals_y", "down") not in NORMALS_Y:
                raise UserError(
                    f"dataset.normals_y must be one of {', '.join(NORMALS_Y)}, "
                    f"got {cfg.normals_y!r}"
                )
            if cfg.get("augment", "clean") not in AUGMENT_MODES:
                raise UserError(
                    f"dataset.augment must be one of {', '.join(AUGMENT_MODES)}, "
                    f"got {cfg.augment!r}"
                )
            size = cfg.image_size
            if not isinstance(size, int) or size < 32 or size % 32:
                raise UserError(f"dataset.image_size must be a multiple of 32, got {size}")
    outputs = {t: num_classes if t == "semseg" else FIXED_OUTPUTS[t] for t in tasks}
    return DatasetInfo(cfg.name, tasks, outputs, int(cfg.image_size), eval_resolution)


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


def make_layout(cfg: DictConfig):
    """The `Layout` of a real dataset config; names what to pass when the root is unset."""
    cls = layout_class(cfg.name)
    if not cfg.get("root"):
        raise UserError(
            f"dataset={cfg.name} needs dataset.root=DIR, the folder of {cls.release} "
            f"(holding {cls.expected})"
        )
    return cls(str(cfg.root), list(cfg.tasks))


def check_dataset(cfg: DictConfig) -> None:
    """Cheap checks before any run starts: a real dataset's root and split lists exist."""
    if cfg.name in REAL_DATASETS:
        make_layout(cfg).check()


@dataclass
class Split:
    """One split as arrays: `image` (N, H, W, 3) uint8 and one array per label.

    Real datasets hold every image in the top-left corner of a common canvas: `sizes`
    (N, 2) gives each one's true (height, width), `ids` its name, and `geometry` how a batch
    becomes the model's input. Without `geometry` the arrays are already at input size.
    """

    arrays: dict[str, Tensor]
    sizes: Tensor | None = None
    ids: list[str] | None = None
    geometry: Geometry | None = None
    # copies of the arrays on a device, by device name (`place_split`)
    placed: dict[str, Split] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return self.arrays["image"].shape[0]

    @property
    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() for a in self.arrays.values())


def place_split(split: Split, device: torch.device, share: float) -> Split:
    """`split` with its arrays on the GPU `device` when they fit in `share` of its free
    memory (counting what PyTorch holds cached but unused), else `split` as it is.

    Batches are then gathered and augmented on the GPU with no copy from the host at all.
    The copy is made once and kept with `split`, so the runs of a sweep share it.
    """
    if device.type != "cuda" or share <= 0:
        return split
    key = str(device)
    if key not in split.placed:
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        if split.nbytes > share * free:
            return split
        arrays = {k: torch.as_tensor(v).to(device) for k, v in split.arrays.items()}
        split.placed[key] = replace(split, arrays=arrays, placed={})
    return split.placed[key]


@dataclass
class MultiTaskData:
    info: DatasetInfo
    train: Split
    val: Split


def _cache_root(cfg: DictConfig) -> Path:
    from benchmark.data.synthetic import cache_dir

    return Path(cfg.cache_dir).expanduser() if cfg.get("cache_dir") else cache_dir()


def load_dataset(cfg: DictConfig, progress: bool = True) -> MultiTaskData:
    info = dataset_info(cfg)
    if cfg.name in REAL_DATASETS:
        return _load_real(cfg, info, progress)
    if cfg.name != "synthetic":
        raise UserError(f"dataset {cfg.name}: no loader; use synthetic, pascal_context or nyud")
    from benchmark.data import synthetic

    root = _cache_root(cfg)
    keep = ["image", *info.tasks]
    splits = {}
    for split, size in (("train", cfg.train_size), ("val", cfg.val_size)):
        arrays = synthetic.load_split(
            cfg.seed, split, int(size), info.image_size, root=root, progress=progress
        )
        splits[split] = Split({k: torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in keep})
    return MultiTaskData(info, splits["train"], splits["val"])


def load_real_split(cfg: DictConfig, split: str, progress: bool = True) -> Split:
    """One split of `pascal_context` or `nyud`, from the prepared cache (built on first use)."""
    from benchmark.data import prepared

    info = dataset_info(cfg)
    layout = make_layout(cfg)
    layout.check()
    geometry = Geometry(
        size=info.image_size,
        normals_y=str(cfg.get("normals_y", "down")),
        original_resolution=info.eval_resolution == "original",
        augment=str(cfg.get("augment", "clean")),
    )
    data = prepared.load_split(layout, split, _cache_root(cfg), progress=progress)
    arrays = {k: torch.from_numpy(v) for k, v in data.arrays.items()}
    return Split(arrays, torch.from_numpy(np.asarray(data.sizes)), data.ids, geometry)


def _load_real(cfg: DictConfig, info: DatasetInfo, progress: bool) -> MultiTaskData:
    train = load_real_split(cfg, "train", progress)
    val = load_real_split(cfg, "val", progress)
    return MultiTaskData(info, train, val)


def decode_normals(raw: Tensor) -> Tensor:
    """Stored normals (..., 3) as float vectors: uint8 codes v -> v*2/255-1, with the code
    (0, 0, 0) meaning no label (the zero vector); float arrays as they are."""
    if raw.dtype == torch.uint8:
        valid = (raw != 0).any(dim=-1, keepdim=True)
        return torch.where(valid, raw.float() * (2.0 / 255.0) - 1.0, 0.0)
    return raw.float()


def _label(task: str, raw: Tensor, valid: Tensor | None) -> Tensor:
    """Stored values (N, H, W[, C]) in the label format of `benchmark.tasks`; outside
    `valid` (N, 1, H, W), no label."""
    if task in CLASS_MAP_TASKS:
        label = raw.long()
        return label if valid is None else torch.where(valid[:, 0], label, IGNORE_INDEX)
    if task == "normals":
        label = decode_normals(raw).permute(0, 3, 1, 2)
    else:
        label = raw.float().unsqueeze(1)
    return label if valid is None else torch.where(valid, label, 0.0)


def labels_at_original_size(
    split: Split, index: int, tasks: Sequence[str], device: torch.device
) -> dict[str, Tensor]:
    """The labels of image `index` of a canvas split at its own size, as a batch of one."""
    h, w = (int(v) for v in split.sizes[index])
    return {
        task: _label(task, split.arrays[task][index : index + 1, :h, :w].to(device), None)
        for task in tasks
    }


class BatchLoader:
    """Batches of a `Split` on `device`, in the label formats of `benchmark.tasks`.

    The order is a permutation drawn from (seed, epoch), so a run is reproducible and a
    resumed run sees the same batches. `augment` flips each image horizontally with
    probability 1/2, negating the x component of its normals; on a split with a `geometry`
    (real data) it also rotates and scales, and every batch is resized to the input size
    (`benchmark.data.transforms`). Batches of such splits carry `index`, the images'
    positions in the split, for `score_pairs`.

    Across `world_size` processes (`benchmark.distributed`) every global step takes the next
    `batch_size * world_size` images of the permutation and rank r the r-th share of them,
    with the augmentation drawn for the whole global batch: the ranks' shards of an epoch
    are disjoint, together they are exactly what one process with the global batch size
    sees, and with `drop_last` every rank yields `len(self)` batches. Without `drop_last`
    (evaluation) the last global batch is shared out evenly, so a rank may get one batch
    fewer.

    Where the arrays are decides how a batch reaches the device: arrays already on it
    (`place_split`) are gathered there; arrays in host memory are gathered on the host,
    copied to the device from pinned memory without blocking, and with `prefetch` > 0 a
    background thread does this up to `prefetch` batches ahead (on CUDA on a stream of its
    own, so the copy overlaps the computation). The conversion and augmentation always run
    on `device`, batched.
    """

    def __init__(
        self,
        split: Split,
        tasks: Sequence[str],
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        max_batches: int | None = None,
        max_images: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 0,
    ):
        from benchmark.distributed import device_for

        self.split = split
        self.tasks = list(tasks)
        self.batch_size = batch_size
        self.device = device = device_for(device)  # CUDA with its index
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.rank = rank
        self.world_size = world_size
        self.prefetch = prefetch
        size = len(split) if max_images is None else min(len(split), max_images)
        self.size = size
        step = batch_size * world_size
        batches = size // step if drop_last else -(-size // step)
        if batches == 0:
            per = f"{batch_size} x {world_size} processes" if world_size > 1 else batch_size
            raise UserError(
                f"batch size {per} is larger than the {size} training images; "
                "lower budget.batch_size or enlarge the dataset"
            )
        self.num_batches = batches if max_batches is None else min(batches, max_batches)
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
        self._mean, self._std = mean, std

    def __len__(self) -> int:
        """Global steps per epoch (with `drop_last`, the batches every rank yields)."""
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        from benchmark.distributed import same_device

        plan = self._plan()
        on_device = same_device(self.split.arrays["image"].device, self.device)
        if self.prefetch > 0 and not on_device:
            yield from self._prefetched(plan)
            return
        for idx, aug in plan:
            yield self._finish(self._to_device(self._gather(idx)), idx, aug)

    def _plan(self) -> Iterator[tuple[Tensor, Tensor | Augmentation | None]]:
        """This rank's batches: (image indices, augmentation draw or None), in order."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.shuffle:
            order = torch.randperm(self.size, generator=gen)
        else:
            order = torch.arange(self.size)
        geometry = self.split.geometry
        step = self.batch_size * self.world_size
        for b in range(self.num_batches):
            idx = order[b * step : (b + 1) * step]
            aug = None
            if self.augment and geometry is None:
                aug = torch.rand(len(idx), generator=gen) < 0.5  # horizontal flips
            elif self.augment:
                aug = Augmentation.draw(geometry, len(idx), gen)
            share = -(-len(idx) // self.world_size)
            mine = slice(self.rank * share, (self.rank + 1) * share)
            idx = idx[mine]
            if len(idx):
                yield idx, None if aug is None else aug[mine]

    def _gather(self, idx: Tensor) -> dict[str, Tensor]:
        """The stored arrays of images `idx` where the split keeps them; on a canvas split
        cropped to the batch's largest image."""
        arrays = self.split.arrays
        where = arrays["image"].device
        index = idx.to(where, non_blocking=True)
        crop = (slice(None), slice(None))
        if self.split.geometry is not None:
            sizes = self.split.sizes[idx]
            crop = (slice(0, int(sizes[:, 0].max())), slice(0, int(sizes[:, 1].max())))
        return {key: arrays[key][(index, *crop)] for key in ("image", *self.tasks)}

    def _to_device(self, raw: dict[str, Tensor]) -> dict[str, Tensor]:
        """Host arrays to `device` without blocking the host (from pinned memory on CUDA)."""
        if self.device.type != "cuda":
            return {k: v.to(self.device) for k, v in raw.items()}
        return {
            k: v if v.is_cuda else v.pin_memory().to(self.device, non_blocking=True)
            for k, v in raw.items()
        }

    def _prefetched(self, plan) -> Iterator[dict[str, Tensor]]:
        """`__iter__` with gathering and copying done up to `prefetch` batches ahead in a
        background thread; the batches and their order are the same."""
        items: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                if cuda:
                    # a new thread starts on GPU 0: without this, pinning and copying would
                    # open a context there from every rank of a multi-GPU run
                    torch.cuda.set_device(self.device)
                with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                    for idx, aug in plan:
                        raw = self._to_device(self._gather(idx))
                        ready = None
                        if cuda:
                            ready = torch.cuda.Event()
                            ready.record(stream)
                        if not put((idx, aug, raw, ready)):
                            return
            except BaseException as err:  # handed to the consumer, which raises it
                put(err)
                return
            put(None)

        thread = threading.Thread(target=work, name="batch-prefetch", daemon=True)
        thread.start()
        try:
            while (item := items.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                idx, aug, raw, ready = item
                if ready is not None:
                    # the copy ran on the prefetch stream: wait for it on this one, and tell
                    # the allocator that this stream uses the memory it filled
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(ready)
                    for value in raw.values():
                        value.record_stream(current)
                yield self._finish(raw, idx, aug)
        finally:
            stop.set()
            thread.join()

    def _finish(
        self, raw: dict[str, Tensor], idx: Tensor, aug: Tensor | Augmentation | None
    ) -> dict[str, Tensor]:
        if self.split.geometry is None:
            return self._batch(raw, aug)
        return self._warped_batch(raw, idx, aug)

    def _batch(self, raw: dict[str, Tensor], flip: Tensor | None) -> dict[str, Tensor]:
        image = raw["image"].permute(0, 3, 1, 2)
        batch = {"image": (image.float() - self._mean) / self._std}
        for task in self.tasks:
            batch[task] = _label(task, raw[task], None)
        if flip is not None and bool(flip.any()):
            flip = flip.to(self.device, non_blocking=True)
            for key, value in batch.items():
                flipped = value.flip(-1)
                if key == "normals":
                    flipped[:, 0] = -flipped[:, 0]
                mask = flip.view(-1, *([1] * (value.dim() - 1)))
                batch[key] = torch.where(mask, flipped, value)
        return batch

    def _warped_batch(
        self, raw: dict[str, Tensor], idx: Tensor, aug: Augmentation | None
    ) -> dict[str, Tensor]:
        """Sample the image (gathered from the canvas, cropped to the batch's largest
        image) bilinearly and pick every label at the nearest source pixel, so the labels
        are converted to their formats at the output size only."""
        split, geometry, device = self.split, self.split.geometry, self.device
        n = len(idx)
        sizes = split.sizes[idx]
        h, w = raw["image"].shape[1:3]
        if aug is None:
            aug = Augmentation.identity(n)
        grid, valid = sampling_grid(sizes, (h, w), geometry.size, aug, device)
        official = geometry.official  # `benchmark.data.transforms`: the two modes
        image = (sample_image(raw["image"], sizes, grid, official) - self._mean) / self._std
        batch = {"image": image if official else torch.where(valid, image, 0.0)}
        source = nearest_indices(grid, (h, w)).view(n, -1, 1)
        out = (n, geometry.size, geometry.size)
        for task in self.tasks:
            stored = raw[task]
            if official and task == "normals":
                label = sample_normals_cubic(decode_normals(stored).permute(0, 3, 1, 2), grid)
                batch[task] = rotate_normals(label, normals_rotation(aug, geometry.normals_y))
                continue
            channels = stored.shape[3] if stored.dim() == 4 else 1
            picked = stored.reshape(n, h * w, channels).gather(1, source.expand(-1, -1, channels))
            picked = picked.view(*out, channels) if stored.dim() == 4 else picked.view(out)
            if official:
                label = official_fill(task, _label(task, picked, None), valid, aug.scale)
            else:
                label = _label(task, picked, valid)
            if task == "normals":
                label = rotate_normals(label, normals_rotation(aug, geometry.normals_y))
            batch[task] = label
        batch["index"] = idx
        return batch

    def score_pairs(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
        """(predictions, labels) at the resolution the split is scored at.

        At the input size that is the batch itself. With `eval_resolution=original` every
        prediction is resized (bilinear; class maps as logits, before the argmax) to its
        image's own size and paired with the labels there, one image at a time.
        """
        geometry = self.split.geometry
        if geometry is None or not geometry.original_resolution:
            yield outputs, batch
            return
        indices = batch["index"].tolist()
        # every label of the batch copied at once, from pinned memory, without blocking
        pin = self.device.type == "cuda"
        host = []
        for index in indices:
            h, w = (int(v) for v in self.split.sizes[index])
            crops = {t: self.split.arrays[t][index : index + 1, :h, :w] for t in self.tasks}
            host.append({t: v.pin_memory() if pin and not v.is_cuda else v
                         for t, v in crops.items()})
        copies = [{t: v.to(self.device, non_blocking=True) for t, v in crops.items()}
                  for crops in host]
        for j, index in enumerate(indices):
            labels = {task: _label(task, copies[j][task], None) for task in self.tasks}
            h, w = (int(v) for v in self.split.sizes[index])
            resized = {
                task: F.interpolate(
                    outputs[task][j : j + 1].float(), size=(h, w), mode="bilinear",
                    align_corners=False,
                )
                for task in self.tasks
            }
            yield resized, labels
