"""Training and evaluation of one model (SPEC 4), read top to bottom.

AdamW (betas 0.9/0.999, eps 1e-8) with weight decay on matrices only; the learning rates
of the budget scaled by batch * world / 512; linear warm-up then cosine decay, per step;
gradient-norm clipping; bf16 autocast on CUDA; the task-weighted loss of SPEC 1.1; metrics
from streaming meters over the validation split.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from benchmark.cost import PeakMemory, Stopwatch
from benchmark.data import BatchLoader, MultiTaskData
from benchmark.errors import UserError
from benchmark.losses import MultiTaskLoss
from benchmark.metrics import TaskMeters
from benchmark.model import MultiTaskModel, count_parameters


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class OutOfMemory(RuntimeError):
    """The device ran out of memory at the budget's batch size."""


@dataclass
class GroupResult:
    """A trained model's metrics and costs (one task group of a method)."""

    tasks: list[str]
    metrics: dict[str, dict[str, float]]
    trainable: int
    total: int
    decoders: int
    train_seconds: float
    train_images: int
    peak_memory_mb: float | None
    memory_kind: str
    final_loss: float


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only: not on biases, norms (1-D) or the
    relative-position tables (the official Swin recipe that MTLoRA uses)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(".bias") or "relative_position_bias_table" in name
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_schedule(budget: DictConfig, steps_per_epoch: int, world_size: int = 1):
    """Per-step learning rate: linear warm-up from warmup_lr, then cosine to min_lr."""
    scale = budget.batch_size * world_size / 512
    base, warm, floor = budget.lr * scale, budget.warmup_lr * scale, budget.min_lr * scale
    total = max(1, budget.epochs * steps_per_epoch)
    warmup = min(total - 1, round(budget.warmup_epochs * steps_per_epoch))

    def lr_at(step: int) -> float:
        if step < warmup:
            return warm + (base - warm) * step / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * progress))

    return lr_at


def autocast(device: torch.device, enabled: bool):
    enabled = enabled and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_and_evaluate(
    model: MultiTaskModel,
    data: MultiTaskData,
    budget: DictConfig,
    device: torch.device,
    seed: int,
    progress: bool = True,
    desc: str = "train",
    checkpoint: Path | None = None,
    checkpoint_every: int = 1,
) -> GroupResult:
    """Train `model` with the budget's recipe, then evaluate it on the validation split.

    With `checkpoint`, the training state (model, optimiser, step, RNG, cost so far) is saved
    there atomically every `checkpoint_every` epochs and after the last one, and a run that
    finds it resumes from it: the data order depends on (seed, epoch) only and the RNG state
    is restored, so a resumed run reaches the same weights as an uninterrupted one.
    """
    tasks = model.tasks
    model.to(device)
    loader = BatchLoader(
        data.train, tasks, budget.batch_size, device, shuffle=True, augment=True, seed=seed,
        drop_last=True, max_batches=budget.train_batches,
    )
    criterion = MultiTaskLoss(tasks)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        param_groups(model, budget.weight_decay), lr=budget.lr, betas=(0.9, 0.999), eps=1e-8,
        fused=device.type == "cuda",
    )
    lr_at = lr_schedule(budget, len(loader))
    total_steps = budget.epochs * len(loader)

    state = TrainState()
    if checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint, model, optimizer, device)
    bar = tqdm(
        total=total_steps, initial=state.step, desc=desc, unit="step", disable=not progress,
        leave=False,
    )
    with PeakMemory(device) as memory:
        model.train()
        for epoch in range(state.epoch, budget.epochs):
            with Stopwatch(device) as watch:
                loader.set_epoch(epoch)
                epoch_loss = torch.zeros((), device=device)
                for batch in loader:
                    for group in optimizer.param_groups:
                        group["lr"] = lr_at(state.step)
                    try:
                        with autocast(device, budget.amp):
                            outputs = model(batch["image"])
                        loss, _ = criterion(outputs, batch)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                    except torch.cuda.OutOfMemoryError:
                        raise OutOfMemory(
                            f"out of memory on {device} at budget.batch_size="
                            f"{budget.batch_size}; lower it (the learning rate scales with it)"
                        ) from None
                    torch.nn.utils.clip_grad_norm_(params, budget.clip_grad)
                    optimizer.step()
                    epoch_loss += loss.detach()
                    state.step += 1
                    state.images += batch["image"].shape[0]
                    bar.update()
                state.last_loss = (epoch_loss / len(loader)).item()  # one host sync per epoch
            state.epoch = epoch + 1
            state.seconds += watch.seconds
            bar.set_postfix(epoch=epoch + 1, loss=f"{state.last_loss:.3f}")
            if not math.isfinite(state.last_loss):
                bar.close()
                raise TrainingDiverged(
                    f"the training loss became {state.last_loss} in epoch {epoch + 1} "
                    f"(budget.lr={budget.lr})"
                )
            last = state.epoch == budget.epochs
            if checkpoint is not None and checkpoint_every > 0 and (
                state.epoch % checkpoint_every == 0 or last
            ):
                state.peak_memory_mb = _max(state.peak_memory_mb, memory.current_mb())
                save_checkpoint(checkpoint, model, optimizer, state)
    bar.close()

    metrics = evaluate(model, data, budget, device)
    return GroupResult(
        tasks=tasks,
        metrics=metrics,
        trainable=count_parameters(model, trainable_only=True),
        total=count_parameters(model),
        decoders=count_parameters(model.decoders),
        train_seconds=state.seconds,
        train_images=state.images,
        peak_memory_mb=_max(state.peak_memory_mb, memory.mb),
        memory_kind=memory.kind,
        final_loss=state.last_loss,
    )


def _max(a: float | None, b: float | None) -> float | None:
    values = [v for v in (a, b) if v is not None]
    return max(values) if values else None


@dataclass
class TrainState:
    """What a checkpoint carries besides the model and the optimiser."""

    epoch: int = 0  # completed epochs
    step: int = 0
    images: int = 0
    seconds: float = 0.0
    peak_memory_mb: float | None = None
    last_loss: float = float("nan")


def save_checkpoint(path: Path, model: nn.Module, optimizer, state: TrainState) -> None:
    blob = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": asdict(state),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(blob, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, model: nn.Module, optimizer, device: torch.device) -> TrainState:
    try:
        blob = torch.load(path, map_location=device, weights_only=False)
        model.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
    except Exception as err:  # a checkpoint of another configuration or a damaged file
        raise UserError(
            f"cannot resume from {path}: {type(err).__name__}; delete it or run with force=true"
        ) from None
    torch.set_rng_state(blob["rng"].cpu())
    if blob["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in blob["cuda_rng"]])
    return TrainState(**blob["state"])


@torch.no_grad()
def evaluate(
    model: MultiTaskModel, data: MultiTaskData, budget: DictConfig, device: torch.device
) -> dict[str, dict[str, float]]:
    """Metrics over the validation split, at the resolution the dataset is scored at
    (`dataset.eval_resolution`: the input size, or each image's own size)."""
    tasks = model.tasks
    loader = BatchLoader(
        data.val, tasks, 2 * budget.batch_size, device, max_images=budget.val_images
    )
    meters = TaskMeters({t: data.info.num_outputs[t] for t in tasks})
    model.eval()
    for batch in loader:
        with autocast(device, budget.amp):
            outputs = model(batch["image"])
        for predictions, labels in loader.score_pairs(outputs, batch):
            meters.update(predictions, labels)
    return meters.compute()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA device is visible; use device=cpu or auto")
    return device
