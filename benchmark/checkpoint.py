"""A training run's checkpoint: what it carries (`TrainState`, the model, the optimiser, the
RNG states), when it is written (`should_checkpoint`: epochs, or training time, and always the
last epoch), and how it is written and read back (rank 0 writes atomically; every rank reads,
tensors and plain values only).

A resumed run reaches the same weights as an uninterrupted one: the data order depends on
(seed, epoch) only and the RNG state is restored (`benchmark.train.train_and_evaluate`).
"""

from __future__ import annotations

import io
import os
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from benchmark import distributed
from benchmark.atomic import atomic_write
from benchmark.errors import UserError


@dataclass
class TrainState:
    """What a checkpoint carries besides the model and the optimiser (plain values only)."""

    epoch: int = 0  # completed epochs
    step: int = 0
    images: int = 0  # over all ranks
    seconds: float = 0.0
    peak_memory_mb: float | None = None
    last_loss: float = float("nan")
    world_size: int = 1  # the shards and the step count depend on it
    loss_curve: dict = field(default_factory=dict)  # GroupResult.loss_curve so far
    val_curve: list = field(default_factory=list)  # GroupResult.val_curve so far
    checkpoint_seconds: float = 0.0  # spent writing checkpoints so far
    saved_at: float = 0.0  # training seconds at the last checkpoint


# At most one checkpoint per 10 minutes of training: a full fine-tuning of Swin-T writes
# 337 MiB in about a second, so per-epoch checkpoints cost minutes per run; at this cadence
# an interruption loses at most 10 minutes. Writing stays on the training thread: at one
# write per 10 minutes its cost is under 0.2 % of the run, which a background writer (and
# the copy of every tensor it needs) would not clearly win back.
DEFAULT_CADENCE = ("seconds", 600.0)


def checkpoints_written(train_seconds: float, epochs: int) -> int:
    """How many checkpoints `DEFAULT_CADENCE` writes in a run of `epochs` equal epochs that
    train `train_seconds` in all: at the first epoch end after each full period, and after
    the last epoch."""
    period, per_epoch = DEFAULT_CADENCE[1], train_seconds / epochs
    written, since = 0, 0.0
    for epoch in range(1, epochs + 1):
        since += per_epoch
        if epoch == epochs or since >= period:
            written, since = written + 1, 0.0
    return written


def should_checkpoint(
    state: TrainState, every: int | tuple[str, float] | None, last: bool
) -> bool:
    """Whether to checkpoint at the end of the epoch that `state` just completed.

    `every` is a number of epochs (0: never) or `("epochs", n)` / `("seconds", s)` of
    training time since the last checkpoint (None: `DEFAULT_CADENCE`). Unless checkpoints
    are off, the last epoch is always saved: evaluation and the record follow, and a run
    interrupted there resumes with nothing to retrain (one write per run)."""
    every = DEFAULT_CADENCE if every is None else every
    kind, amount = ("epochs", every) if isinstance(every, int) else every
    if amount <= 0:
        return False
    if last:
        return True
    if kind == "epochs":
        return state.epoch % int(amount) == 0
    return state.seconds - state.saved_at >= amount


def _rng_state(device: torch.device) -> dict:
    """The RNG states, as tensors (what `torch.load(weights_only=True)` reads back)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def save_checkpoint(
    path: Path, model: nn.Module, optimizer, state: TrainState, device: torch.device
) -> None:
    """Rank 0 writes the model, the optimiser (the same on every rank) and the RNG state
    of every rank (a collective: every rank calls this): tensors and plain values only.
    The file is serialised in memory first, so that a full disk surfaces as the OSError
    of the write (ENOSPC) rather than as an error inside torch's zip writer."""
    state.saved_at = state.seconds
    rng = distributed.gather(_rng_state(device))
    if not distributed.is_main():
        return
    start = time.perf_counter()
    buffer = io.BytesIO()
    torch.save({
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": asdict(state),
        "rng": rng,
    }, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()),
                 tmp=path.with_name(f".{path.name}.{os.getpid()}.tmp"))
    state.checkpoint_seconds += time.perf_counter() - start


def load_checkpoint(path: Path, model: nn.Module, optimizer, device: torch.device) -> TrainState:
    """Every rank loads the same file (the ranks share the results directory). Only tensors
    and plain values are read (`weights_only=True`): a file that needs more (a pickled
    object, which could run code) is refused and nothing in it runs."""
    world = distributed.current()
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():  # a damaged file rather than a refusal
            raise UserError(
                f"cannot resume from {path}: not a readable checkpoint; delete it or run "
                "with force=true"
            ) from None
        raise UserError(
            f"refusing to resume from {path}: it holds objects other than tensors and plain "
            "values, which this suite never writes; delete it or run with force=true"
        ) from None
    except Exception as err:  # not a checkpoint, or a damaged file
        raise UserError(
            f"cannot resume from {path}: {type(err).__name__}; delete it or run with force=true"
        ) from None
    try:
        state = TrainState(**blob["state"])
        if state.world_size == world.size:
            model.load_state_dict(blob["model"])
            optimizer.load_state_dict(blob["optimizer"])
            rng = blob["rng"][world.rank]
    except Exception as err:  # a checkpoint of another configuration or a damaged file
        raise UserError(
            f"cannot resume from {path}: {type(err).__name__}; delete it or run with force=true"
        ) from None
    if state.world_size != world.size:
        raise UserError(
            f"{path} was written by {state.world_size} processes and this run has "
            f"{world.size}: resume with the same number, or run with force=true"
        )
    torch.set_rng_state(rng["cpu"].cpu())
    if rng["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"].cpu(), device)
    return state
