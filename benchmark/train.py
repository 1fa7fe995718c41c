"""Training and evaluation of one model (SPEC 4), read top to bottom.

AdamW (betas 0.9/0.999, eps 1e-8) with weight decay on matrices only; the learning rates
of the budget scaled by batch * world / 512; linear warm-up then cosine decay, per step;
gradient-norm clipping; bf16 autocast on CUDA; the task-weighted loss of SPEC 1.1; metrics
from streaming meters over the validation split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
) -> GroupResult:
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

    step, images, last_loss = 0, 0, float("nan")
    bar = tqdm(total=total_steps, desc=desc, unit="step", disable=not progress, leave=False)
    with Stopwatch(device) as watch, PeakMemory(device) as memory:
        model.train()
        for epoch in range(budget.epochs):
            loader.set_epoch(epoch)
            epoch_loss = torch.zeros((), device=device)
            for batch in loader:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step)
                with autocast(device, budget.amp):
                    outputs = model(batch["image"])
                loss, _ = criterion(outputs, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, budget.clip_grad)
                optimizer.step()
                epoch_loss += loss.detach()
                step += 1
                images += batch["image"].shape[0]
                bar.update()
            last_loss = (epoch_loss / len(loader)).item()  # one host sync per epoch
            bar.set_postfix(epoch=epoch + 1, loss=f"{last_loss:.3f}")
            if not math.isfinite(last_loss):
                bar.close()
                raise TrainingDiverged(f"the training loss became {last_loss} in epoch {epoch + 1}")
    bar.close()

    metrics = evaluate(model, data, budget, device)
    decoders = count_parameters(model.decoders)
    return GroupResult(
        tasks=tasks,
        metrics=metrics,
        trainable=count_parameters(model, trainable_only=True),
        total=count_parameters(model),
        decoders=decoders,
        train_seconds=watch.seconds,
        train_images=images,
        peak_memory_mb=memory.mb,
        memory_kind=memory.kind,
        final_loss=last_loss,
    )


@torch.no_grad()
def evaluate(
    model: MultiTaskModel, data: MultiTaskData, budget: DictConfig, device: torch.device
) -> dict[str, dict[str, float]]:
    tasks = model.tasks
    loader = BatchLoader(
        data.val, tasks, 2 * budget.batch_size, device, max_images=budget.val_images
    )
    meters = TaskMeters({t: data.info.num_outputs[t] for t in tasks})
    model.eval()
    for batch in loader:
        with autocast(device, budget.amp):
            outputs = model(batch["image"])
        meters.update(outputs, batch)
    return meters.compute()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA device is visible; use device=cpu or auto")
    return device
