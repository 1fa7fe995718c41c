"""One run over several processes (`torchrun --nproc_per_node=N -m benchmark.run ...`).

torchrun starts N copies of the command and tells each its place through the environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). `setup` joins them into one
process group: NCCL when the runs train on CUDA (each process on the GPU of its
LOCAL_RANK), gloo on the CPU. Without those variables everything here is a no-op, so the
single-process path is the same code with a world of one.

The division of labour, which the rest of the harness follows:

- every rank runs the same sequence of runs, in the same order, and trains every model
  (DistributedDataParallel, each rank a disjoint shard of every epoch);
- rank 0 alone decides what a run does (skip, resume, busy) and `broadcast`s the decision,
  holds the run's lock, and writes checkpoints, records and logs;
- evaluation is sharded too, and the meters' sums are reduced over the ranks, so every rank
  computes the same metrics.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from benchmark.errors import UserError

# A collective waits this long for the slowest rank. Generous, because rank 0 may build a
# real dataset's cache while the others wait for it (`main_first`).
TIMEOUT = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets the
    torch.distributed environment) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> World:
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def is_main() -> bool:
    return current().is_main


def setup(device: str) -> World:
    """Join the process group when launched as one of several processes; `device` is the
    configuration's `device` (the first run's: a sweep trains on one kind of device)."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return current()
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        kind = torch.device(device).type
    if kind == "cuda":
        if device not in ("auto", "cuda"):
            raise UserError(
                f"device={device} under torchrun: use device=cuda (or auto); each process "
                "trains on the GPU of its LOCAL_RANK"
            )
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are "
                "visible; lower --nproc_per_node"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if kind == "cuda" else "gloo", timeout=TIMEOUT)
    return current()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: torch.device) -> torch.device:
    """The one place where a CUDA device gets its index: the GPU of this rank's LOCAL_RANK
    under torchrun, else the index given, else the current CUDA device. Tensors always carry
    an index (`cuda:0`) and `torch.device("cuda") != torch.device("cuda:0")`, so a device
    without one would compare unequal to where its own tensors live, and the calls that
    need an index (`torch.cuda.set_device`) would refuse it."""
    device = torch.device(device)
    if device.type != "cuda":
        return device
    world = current()
    if world.distributed:
        return torch.device("cuda", world.local_rank)
    if device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same, by type and index (`cuda` meaning its index)."""
    a, b = device_for(a), device_for(b)
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def broadcast(value):
    """Rank 0's `value` on every rank (any picklable object); `value` itself in a single
    process. Other ranks may pass anything (it is ignored)."""
    if not current().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value) -> list:
    """Every rank's `value`, in rank order, on every rank."""
    world = current()
    if not world.distributed:
        return [value]
    out = [None] * world.size
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    if current().distributed:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. building a cache on disk), then the others."""
    world = current()
    if not world.distributed:
        yield
        return
    if not world.is_main:
        dist.barrier()
    yield
    if world.is_main:
        dist.barrier()


def all_reduce_(tensor: Tensor, op: str = "sum") -> Tensor:
    """In place over the ranks (`sum` or `mean`); unchanged in a single process."""
    world = current()
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        if op == "mean":
            tensor.div_(world.size)
    return tensor


def sync_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics). DDP broadcasts them
    at the start of each training forward, so after the last step each rank holds the
    statistics of its own last batch; evaluation and checkpoints use rank 0's."""
    if current().distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def check_replicas(module: nn.Module) -> None:
    """Raise when the ranks' copies of `module` differ (DDP keeps them identical: the same
    start, the same averaged gradients, the same optimiser step). Compares a fingerprint of
    every parameter and buffer; costs one pass over the weights and one collective."""
    world = current()
    if not world.distributed:
        return
    names, prints = [], []
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        values = t.detach().double()
        names.append(name)
        prints.append(torch.stack([values.sum(), values.square().sum()]))
    mine = torch.stack(prints).cpu() if prints else torch.zeros(0, 2, dtype=torch.float64)
    everyone = gather(mine)
    for rank, theirs in enumerate(everyone):
        differ = (theirs != everyone[0]).any(dim=1).nonzero()
        if len(differ):
            raise RuntimeError(
                f"the model on rank {rank} differs from rank 0's in {names[int(differ[0])]} "
                f"(and {len(differ) - 1} more tensors)"
            )


def resolve_device(name: str) -> torch.device:
    """The device of `device=NAME`, CUDA always with its index (`device_for`);
    under torchrun, CUDA means this rank's GPU."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UserError(f"unknown device={name}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA device is visible; use device=cpu or auto")
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise UserError(
            f"device={name} but {count} CUDA devices are visible; use cuda:0 to cuda:{count - 1}"
        )
    return device_for(device)
