"""Batches of a split on the device (`BatchLoader`): gathered in a reproducible shuffled
order, sharded across processes, augmented on the whole batch and converted to the label
formats of `benchmark.tasks`."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.data.labels import batch_label, decode_normals
from benchmark.data.splits import Split
from benchmark.data.transforms import (
    Augmentation,
    nearest_indices,
    normals_rotation,
    official_fill,
    rotate_normals,
    sample_image,
    sample_normals_cubic,
    sampling_grid,
)
from benchmark.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
            batch[task] = batch_label(task, raw[task], None)
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
                label = official_fill(task, batch_label(task, picked, None), valid, aug.scale)
            else:
                label = batch_label(task, picked, valid)
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
            labels = {task: batch_label(task, copies[j][task], None) for task in self.tasks}
            h, w = (int(v) for v in self.split.sizes[index])
            resized = {
                task: F.interpolate(
                    outputs[task][j : j + 1].float(), size=(h, w), mode="bilinear",
                    align_corners=False,
                )
                for task in self.tasks
            }
            yield resized, labels
