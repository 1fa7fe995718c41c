"""Training and evaluation of one model (protocol §4), read top to bottom.

AdamW (betas 0.9/0.999, eps 1e-8) with weight decay on matrices only; the learning rates
of the budget scaled by batch * world / 512; linear warm-up then cosine decay, per step;
gradient-norm clipping; the precision of `benchmark.precision` (bf16 autocast on CUDA by
default, fp16 with a gradient scaler, or fp32; evaluation in fp32); the task-weighted loss
of protocol §1.1; metrics from streaming meters over the validation split.

How fast it runs (`Execution`, none of which changes what is computed beyond rounding):
the training loop never waits for the device except once per epoch (the epoch's loss);
the optimiser is the fused AdamW on CUDA; the training split stays on the GPU when it fits
(`benchmark.data.place_split`), otherwise batches are gathered ahead by a background thread
and copied from pinned memory on a stream of their own; `compile` hands the model to
`torch.compile` (dynamo reset per model, so that no model of a sweep falls back to eager
at dynamo's recompile limit; whether it really ran compiled is recorded, and the first
step's excess over the second, the compilation, is timed apart as `compile_seconds` and
left out of `train_seconds`); `channels_last` stores images and convolution weights NHWC;
`fused_attn` switches timm's attention to `scaled_dot_product_attention`. Under torchrun
(`benchmark.distributed`) the model trains in DistributedDataParallel, each rank on its
shard of every epoch, and the evaluation is sharded and reduced.

One optimiser step is `TrainStep`, which `benchmark.perf` times as it is.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from benchmark import distributed
from benchmark.checkpoint import TrainState, load_checkpoint, save_checkpoint, should_checkpoint
from benchmark.config import Execution
from benchmark.config.parts import BudgetSpec
from benchmark.cost import PeakMemory, Stopwatch, synchronize
from benchmark.data import BatchLoader, MultiTaskData, place_split
from benchmark.errors import UserError
from benchmark.losses import MultiTaskLoss
from benchmark.metrics import TaskMeters
from benchmark.model import MultiTaskModel, count_parameters
from benchmark.precision import (
    autocast,
    effective,
    evaluation_precision,
    grad_scaler,
    set_matmul_precision,
    training_precision,
)

# what torch.compile hands the graphs to (a test replaces it with a cheap one)
COMPILE_BACKEND = "inductor"


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
    precision: str = "fp32"  # in effect (a CPU trains in fp32 whatever asked)
    eval_precision: str = "fp32"
    compiled: bool | None = None  # None: not asked; False: asked, but ran eager
    compile_seconds: float = 0.0  # left out of train_seconds
    # per task, the mean unweighted training loss of each epoch (None: an epoch run before
    # curves were recorded, by a resumed run)
    loss_curve: dict[str, list[float | None]] = field(default_factory=dict)
    # with `eval_every=N`: {"epoch": k, "metrics": ...} every N epochs and after the last
    val_curve: list[dict] = field(default_factory=list)
    checkpoint_seconds: float = 0.0  # writing checkpoints (not in train_seconds)


def param_groups(
    model: nn.Module, weight_decay: float, decay_position_tables: bool = False
) -> list[dict]:
    """Weight decay on the trainable parameters of two or more dimensions, never on biases or
    1-D parameters (norms); the relative-position bias tables are decayed only with
    `decay_position_tables` (`budget.decay_position_tables`).

    With it this is the official MTLoRA optimiser: its parameter groups are built from the
    multi-task wrapper, which declares no `no_weight_decay` names, so its skip list is empty
    and the 12 tables of Swin-T (23,322 parameters) are decayed (`budget=paper`). Without it
    the tables are exempt as in the original Swin recipe, which skips the keyword
    `relative_position_bias_table` (`budget=quick` and `smoke`, so that their committed
    results stay as they are)."""
    if not isinstance(decay_position_tables, bool):
        raise UserError(
            f"budget.decay_position_tables must be true or false, got {decay_position_tables!r}"
        )
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        table = "relative_position_bias_table" in name
        skip = p.ndim <= 1 or name.endswith(".bias") or (table and not decay_position_tables)
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_schedule(budget: BudgetSpec | DictConfig, steps_per_epoch: int, world_size: int = 1):
    """Per-step learning rate: linear warm-up from warmup_lr, then cosine to min_lr."""
    budget = BudgetSpec.of(budget)
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


class TrainStep:
    """One optimiser step of the recipe: the learning rate of the step, forward under the
    precision's autocast, the loss, backward (through the gradient scaler for fp16),
    gradient-norm clipping, AdamW. The training loop calls it, and `benchmark.perf` times
    it as it is. Out of memory anywhere in it is `OutOfMemory`."""

    def __init__(self, module: nn.Module, criterion, optimizer, params, budget, device,
                 execution: Execution, lr_at, precision: str, tasks: list[str] | None = None):
        self.module, self.criterion, self.optimizer = module, criterion, optimizer
        self.tasks = tasks  # given: the step returns [loss, each task's loss]
        self.params, self.device, self.lr_at = params, device, lr_at
        self.clip, self.batch_size = budget.clip_grad, budget.batch_size
        self.channels_last = execution.channels_last
        self.precision = precision
        self.scaler = grad_scaler(device, precision)

    def __call__(self, batch: dict, step: int) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        images = batch["image"]
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        try:
            with autocast(self.device, self.precision):
                outputs = self.module(images)
            loss, task_losses = self.criterion(outputs, batch)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is None:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.params, self.clip)
                self.optimizer.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)  # clip the true gradients
                torch.nn.utils.clip_grad_norm_(self.params, self.clip)
                self.scaler.step(self.optimizer)  # skipped when the scaled ones overflowed
                self.scaler.update()
        except torch.cuda.OutOfMemoryError:
            raise OutOfMemory(
                f"out of memory on {self.device} at budget.batch_size={self.batch_size}; "
                "lower it (the learning rate scales with it)"
            ) from None
        if self.tasks is None:
            return loss.detach()
        return torch.stack([loss.detach(), *(task_losses[t].detach() for t in self.tasks)])


class CompileProbe:
    """Whether a compiled module really ran compiled: dynamo counts every graph it hands
    to the backend; none after the first call means dynamo fell back to eager."""

    def __init__(self):
        self._start = self._graphs()

    @staticmethod
    def _graphs() -> int:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])

    @property
    def compiled(self) -> bool:
        return self._graphs() > self._start


def compile_module(module: nn.Module) -> tuple[nn.Module, CompileProbe]:
    """`torch.compile(module)` after resetting dynamo: each new model (a sweep has many, of
    different structure) would otherwise count against the recompile limit of the same
    forward code, and from the ninth on run eager without a word."""
    torch._dynamo.reset()
    probe = CompileProbe()
    return torch.compile(module, backend=COMPILE_BACKEND), probe


def set_fused_attention(model: nn.Module, enabled: bool) -> int:
    """Turn timm's fused attention (`scaled_dot_product_attention`) on or off in every
    attention module of `model`; returns how many there are."""
    modules = [m for m in model.modules() if hasattr(m, "fused_attn")]
    for m in modules:
        m.fused_attn = enabled
    return len(modules)


def train_and_evaluate(
    model: MultiTaskModel,
    data: MultiTaskData,
    budget: BudgetSpec | DictConfig,
    device: torch.device,
    seed: int,
    progress: bool = True,
    desc: str = "train",
    checkpoint: Path | None = None,
    checkpoint_every: int | tuple[str, float] | None = None,
    execution: Execution | None = None,
) -> GroupResult:
    """Train `model` with the budget's recipe, then evaluate it on the validation split.

    With `checkpoint`, the training state (model, optimiser, step, RNG, cost so far) is saved
    there atomically at the end of an epoch, at the cadence `checkpoint_every` sets
    (`should_checkpoint`), and a run that finds it resumes from it: the data order depends
    on (seed, epoch) only and the RNG state is restored, so a resumed run reaches the same
    weights as an uninterrupted one. The time spent writing is `checkpoint_seconds`.

    Under torchrun every rank calls this with the same arguments and an identically
    initialised `model`; rank 0 writes the checkpoint, and every rank returns the same
    metrics.
    """
    execution = execution or Execution()
    budget = BudgetSpec.of(budget)
    world = distributed.current()
    tasks = model.tasks
    device = distributed.device_for(device)
    precision = effective(device, training_precision(budget.group))
    eval_precision = effective(device, evaluation_precision(budget.group))
    set_matmul_precision(device, precision)
    if execution.fused_attn:
        set_fused_attention(model, True)
    model.to(device)
    if execution.channels_last:
        model.to(memory_format=torch.channels_last)
    cuda = device.type == "cuda"
    prefetch = execution.prefetch if cuda else 0
    loader = BatchLoader(
        place_split(data.train, device, execution.data_on_gpu), tasks, budget.batch_size,
        device, shuffle=True, augment=True, seed=seed, drop_last=True,
        max_batches=budget.train_batches, rank=world.rank, world_size=world.size,
        prefetch=prefetch,
    )
    # the training data kept on the GPU is not the model's memory: left out of the peak
    resident = loader.split.nbytes if loader.split is not data.train else 0
    criterion = MultiTaskLoss(tasks)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        param_groups(model, budget.weight_decay, budget.decay_position_tables),
        lr=budget.lr, betas=(0.9, 0.999), eps=1e-8, fused=cuda,
    )
    lr_at = lr_schedule(budget, len(loader), world.size)
    total_steps = budget.epochs * len(loader)

    state = TrainState(world_size=world.size)
    if world.rank > 0:
        # the model starts identical on every rank; dropout and drop path must not
        torch.manual_seed(seed + 100_003 * world.rank)
    if checkpoint is not None and distributed.broadcast(checkpoint.exists()):
        state = load_checkpoint(checkpoint, model, optimizer, device)
    step_model, probe = training_module(
        model, device, data.info.image_size, execution.compile, with_probe=True
    )
    train_step = TrainStep(step_model, criterion, optimizer, params, budget, device, execution,
                           lr_at, precision, tasks=list(tasks))
    compile_seconds = 0.0
    timed_steps: list[float] = []  # the first two steps of a compiled model, synchronised
    bar = tqdm(
        total=total_steps, initial=state.step, desc=desc, unit="step",
        disable=not progress or not world.is_main, leave=False,
    )
    with PeakMemory(device, exclude_bytes=resident) as memory:
        model.train()
        for epoch in range(state.epoch, budget.epochs):
            with Stopwatch(device) as watch:
                loader.set_epoch(epoch)
                # the weighted loss, then each task's loss, summed over the epoch's steps
                epoch_loss = torch.zeros(1 + len(tasks), device=device)
                excluded = 0.0  # compilation in this epoch
                for batch in loader:
                    timing = probe is not None and len(timed_steps) < 2
                    if timing:
                        synchronize(device)
                        start = time.perf_counter()
                    epoch_loss += train_step(batch, state.step)
                    if timing:
                        synchronize(device)
                        timed_steps.append(time.perf_counter() - start)
                        # compilation: the first step's excess over the second
                        spent = (timed_steps[0] if len(timed_steps) == 1
                                 else max(0.0, timed_steps[0] - timed_steps[1]) - timed_steps[0])
                        compile_seconds += spent
                        excluded += spent
                    state.step += 1
                    state.images += batch["image"].shape[0] * world.size
                    bar.update()
                # the mean over every rank's batches, so that all ranks take the same
                # decisions below; one host sync per epoch
                means = (distributed.all_reduce_(epoch_loss, "mean") / len(loader)).tolist()
                state.last_loss = means[0]
            state.epoch = epoch + 1
            state.seconds += max(0.0, watch.seconds - excluded)
            for task, value in zip(tasks, means[1:]):
                curve = state.loss_curve.setdefault(task, [])
                curve += [None] * (epoch - len(curve)) + [value]
            # the epoch that runs next, and the loss of the one that ended
            bar.set_postfix(epoch=min(epoch + 2, budget.epochs), loss=f"{state.last_loss:.3f}")
            if not math.isfinite(state.last_loss):
                bar.close()
                raise TrainingDiverged(
                    f"the training loss became {state.last_loss} in epoch {epoch + 1} "
                    f"(budget.lr={budget.lr})"
                )
            last = state.epoch == budget.epochs
            if execution.eval_every > 0 and state.epoch % execution.eval_every == 0 and not last:
                # outside the stopwatch: no part of the training time; the model is left
                # in eval mode only here, and no RNG is drawn, so the run's result is the same
                state.val_curve.append(
                    {"epoch": state.epoch,
                     "metrics": evaluate(model, data, budget, device, prefetch, eval_precision)}
                )
                model.train()
            # rank 0's clock decides for every rank (the write is a collective)
            if checkpoint is not None and distributed.broadcast(should_checkpoint(
                state, checkpoint_every, last
            )):
                state.peak_memory_mb = _max(state.peak_memory_mb, memory.current_mb())
                save_checkpoint(checkpoint, model, optimizer, state, device)
    bar.close()
    distributed.sync_buffers(model)
    distributed.check_replicas(model)

    metrics = evaluate(model, data, budget, device, prefetch, eval_precision)
    val_curve = list(state.val_curve)
    if execution.eval_every > 0:
        val_curve.append({"epoch": state.epoch, "metrics": metrics})
    peaks = [p for p in distributed.gather(_max(state.peak_memory_mb, memory.mb)) if p]
    return GroupResult(
        tasks=tasks,
        metrics=metrics,
        trainable=count_parameters(model, trainable_only=True),
        total=count_parameters(model),
        decoders=count_parameters(model.decoders),
        train_seconds=state.seconds,
        train_images=state.images,
        peak_memory_mb=max(peaks) if peaks else None,  # per process; the largest over ranks
        memory_kind=memory.kind,
        final_loss=state.last_loss,
        precision=precision,
        eval_precision=eval_precision,
        compiled=None if probe is None else probe.compiled,
        compile_seconds=compile_seconds,
        loss_curve=state.loss_curve,
        val_curve=val_curve,
        checkpoint_seconds=state.checkpoint_seconds,
    )


def training_module(
    model: MultiTaskModel, device: torch.device, image_size: int, compile: bool = False,
    with_probe: bool = False,
):
    """What the training loop calls: `model` itself, wrapped in DistributedDataParallel
    under torchrun, and compiled on request (the DDP wrapper, as PyTorch recommends).
    Checkpoints, evaluation and parameter counts keep using `model`. With `with_probe`,
    also the `CompileProbe` of the compiled module (None when not compiled).

    DDP is never asked to find unused parameters (a walk of the autograd graph and a
    synchronisation every step): the trainable parameters that reach no output are known
    before training (`unused_parameters`) and left out of DDP's gradient reduction; they get
    no gradient on any rank, so they stay as they are on every rank."""
    module: nn.Module = model
    if distributed.current().distributed:
        from torch.nn.parallel import DistributedDataParallel

        ignored = unused_parameters(model, image_size, device)
        if ignored:  # how DDP is told to leave parameters alone
            model._ddp_params_and_buffers_to_ignore = ignored
        module = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=False,
        )
    probe = None
    if compile:
        module, probe = compile_module(module)
    return (module, probe) if with_probe else module


def unused_parameters(model: nn.Module, image_size: int, device: torch.device) -> list[str]:
    """The names of the trainable parameters that reach no output (MTLoRA: the shared
    stream's LoRA on fc2 in the last block, which no decoder reads). One eval-mode forward
    and backward of a blank image finds them without touching the model's state (no
    dropout draws, no BatchNorm update)."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        outputs = model(torch.zeros(1, 3, image_size, image_size, device=device))
        sum(o.float().sum() for o in outputs.values()).backward()
        unused = [n for n, p in trainable if p.grad is None]
    finally:
        for _, p in trainable:
            p.grad = None
        model.train(was_training)
    return unused


def has_unused_parameters(model: nn.Module, image_size: int, device: torch.device) -> bool:
    """Whether some trainable parameter reaches no output (`unused_parameters`)."""
    return bool(unused_parameters(model, image_size, device))


def execution_cost(results: list[GroupResult]) -> dict:
    """The record's `cost` fields of how the groups executed: precision of training and
    evaluation, whether they ran compiled, and the seconds compiling took (not part of
    `train_seconds`)."""
    compiled = [r.compiled for r in results]
    return {
        "precision": results[0].precision,
        "eval_precision": results[0].eval_precision,
        "compiled": None if all(c is None for c in compiled) else all(bool(c) for c in compiled),
        "compile_seconds": sum(r.compile_seconds for r in results),
    }


def _max(a: float | None, b: float | None) -> float | None:
    values = [v for v in (a, b) if v is not None]
    return max(values) if values else None



@torch.no_grad()
def evaluate(
    model: MultiTaskModel,
    data: MultiTaskData,
    budget: BudgetSpec | DictConfig,
    device: torch.device,
    prefetch: int = 0,
    precision: str | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics over the validation split, at the resolution the dataset is scored at
    (`dataset.eval_resolution`: the input size, or each image's own size). Under torchrun
    each rank scores its shard and the meters' sums are added up over the ranks. In
    `precision` (default: the budget's `eval_precision`, fp32 unless set)."""
    budget = BudgetSpec.of(budget)
    tasks = model.tasks
    device = distributed.device_for(device)
    precision = effective(device, precision or evaluation_precision(budget.group))
    world = distributed.current()
    loader = BatchLoader(
        data.val, tasks, 2 * budget.batch_size, device, max_images=budget.val_images,
        rank=world.rank, world_size=world.size, prefetch=prefetch,
    )
    meters = TaskMeters({t: data.info.num_outputs[t] for t in tasks}, device=device)
    model.eval()
    for batch in loader:
        with autocast(device, precision):
            outputs = model(batch["image"])
        for predictions, labels in loader.score_pairs(outputs, batch):
            meters.update(predictions, labels)
    return meters.all_reduce_().compute()
