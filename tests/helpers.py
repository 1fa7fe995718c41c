"""What several test files share: running a command, the tasks of the tiny models and the
tiny models themselves, Swin-T's layout and the count formulas built on it, and the
overfitting and gradient checks of every method."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from benchmark.backbone import SwinBackbone, build_backbone
from benchmark.config import CONF_DIR, compose_all, expand
from benchmark.data import Split
from benchmark.losses import MultiTaskLoss
from benchmark.method import Encoder
from benchmark.model import MultiTaskModel, build_decoders
from benchmark.params import count
from methods.blocks.lowrank import LowRank

ROOT = Path(__file__).resolve().parents[1]
# Small synthetic splits so that command-line tests render in well under a second.
SMALL_DATA = ["dataset.train_size=24", "dataset.val_size=8"]


def run_cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )


def arch(name: str):
    cfg = OmegaConf.load(CONF_DIR / "backbone" / f"{name}.yaml")
    cfg.weights = "none"
    return cfg


def tiny_backbone(image_size: int = 32) -> SwinBackbone:
    torch.manual_seed(0)
    return build_backbone(arch("swin_micro"), image_size, drop_path=0.0)


def tiny_split(n: int = 20, size: int = 4) -> Split:
    """`n` random images of `size` px with semseg and normals labels, in stored formats."""
    g = torch.Generator().manual_seed(0)
    return Split({
        "image": torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g),
        "semseg": torch.randint(0, 5, (n, size, size), dtype=torch.uint8, generator=g),
        "normals": torch.nn.functional.normalize(
            torch.randn(n, size, size, 3, generator=g), dim=-1
        ).half(),
    })


class TinyEncoder(nn.Module):
    """A stand-in for the Swin: one patch convolution, its map at four 'stages'."""

    def __init__(self, tasks):
        super().__init__()
        self.tasks = list(tasks)
        self.patch = nn.Conv2d(3, 8, kernel_size=4, stride=4)

    def forward(self, images):
        x = self.patch(images)
        return {task: [x, x, x, x] for task in self.tasks}

# The synthetic tasks and the output channels of the tiny models' decoders.
TASKS = ["semseg", "human_parts", "sal", "normals"]
OUTPUTS = {"semseg": 5, "human_parts": 7, "sal": 1, "normals": 3}
PASCAL_SWIN_T = ["dataset=pascal_context", "backbone=swin_tiny"]

# Swin-T (protocol §2.1): block widths, stage widths, attention heads per block.
SWIN_T_BLOCKS = [96] * 2 + [192] * 2 + [384] * 6 + [768] * 2
SWIN_T_STAGES = [96, 192, 384, 768]
SWIN_T_HEADS = [3] * 2 + [6] * 2 + [12] * 6 + [24] * 2
# Every LayerNorm: norm1 and norm2 of each block, the merging norms (4 d wide, stages 1-3),
# the patch-embedding norm.
SWIN_T_NORMS = (
    sum(2 * 2 * d for d in SWIN_T_BLOCKS) + sum(2 * 4 * d for d in SWIN_T_STAGES[:3]) + 2 * 96
)
SWIN_T_PATCH_CONV = 3 * 4 * 4 * 96 + 96  # 4 x 4 patches of RGB to 96 channels, with bias
SWIN_T_RELATIVE_POSITIONS = (2 * 7 - 1) ** 2 * sum(SWIN_T_HEADS)  # window 7: 169 per head
# The patch-merging reductions 4 d -> 2 d (no bias) after stages 1-3.
SWIN_T_REDUCTIONS = sum(4 * d * 2 * d for d in SWIN_T_STAGES[:3])
# The decoders of MTLoRA's code for Swin-T on PASCAL-Context (protocol §2.2).
DECODERS = 1_946_624


def ts_lora(task_rank: int = 4, tasks: int = 4) -> int:
    """MTLoRA's TS-LoRA: per task, on proj (d -> d), fc1 (d -> 4d) and fc2 (4d -> d) of each
    stage's last block, r (in + out) = 12 r d."""
    return tasks * task_rank * 12 * sum(SWIN_T_STAGES)


def expected_mtlora(rank: int, plus: bool, task_rank: int = 4, tasks: int = 4) -> int:
    """Trainable parameters of MTLoRA (or MTLoRA+) on Swin-T and PASCAL (protocol §3.1)."""
    # TA-LoRA on qkv (d -> 3d), proj, fc1, fc2 of every block: r (4d + 2d + 5d + 5d)
    ta_lora = 16 * rank * sum(SWIN_T_BLOCKS)
    # MTLoRA trains the merging reductions in full, MTLoRA+ puts TA-LoRA on them: r (4d + 2d)
    merging = 6 * rank * sum(SWIN_T_STAGES[:3]) if plus else SWIN_T_REDUCTIONS
    return (ta_lora + SWIN_T_NORMS + SWIN_T_PATCH_CONV + SWIN_T_RELATIVE_POSITIONS + merging
            + ts_lora(task_rank, tasks) + DECODERS)


def _check_unused(names: set[str], unused: tuple[str, ...]) -> None:
    for prefix in unused:  # a stale prefix would excuse nothing and hide nothing
        assert any(n.startswith(prefix) for n in names), prefix


def assert_gradients(model: MultiTaskModel, batch: dict, unused: tuple[str, ...] = ()) -> None:
    """After one backward pass of the multi-task loss every trainable parameter has a
    non-zero gradient and no frozen one has any, except the trainable ones whose names
    (in `model`) start with a prefix in `unused`, which must have none; the decoders train."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    _check_unused(trainable, unused)
    loss, _ = MultiTaskLoss(model.tasks)(model(batch["image"]), batch)
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad and not name.startswith(unused):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert all(p.requires_grad for p in model.decoders.parameters())


def assert_overfits(
    model: MultiTaskModel, batch: dict, *, steps: int, lr: float, unused: tuple[str, ...] = ()
) -> None:
    """`steps` AdamW steps on one batch lower the multi-task loss below 0.85 of its start and
    move every trainable encoder parameter, except those (named as in `model`) that start
    with a prefix in `unused`, which get no gradient and so stay put (no weight decay)."""
    torch.manual_seed(0)  # dropout
    criterion = MultiTaskLoss(model.tasks)
    params = [p for p in model.parameters() if p.requires_grad]
    encoder = {n: p for n, p in model.named_parameters()
               if n.startswith("encoder.") and p.requires_grad}
    _check_unused(set(encoder), unused)
    before = {n: p.detach().clone() for n, p in encoder.items()}
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        loss, _ = criterion(model(batch["image"]), batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
    for name, p in encoder.items():
        moved = not torch.equal(p.detach(), before[name])
        assert moved != name.startswith(unused), name


# --- tiny models and batches -----------------------------------------------------------


def params_of(*overrides: str) -> list[dict]:
    """`benchmark.params` rows (meta device) for the cartesian product of `overrides`."""
    return [count(cfg) for cfg in compose_all(expand(list(overrides)))]


def fake_batch(n: int = 2, size: int = 32, seed: int = 0, cells: int = 4) -> dict:
    """Labels in the formats of benchmark/tasks.py, constant over `cells` x `cells` blocks
    that the image marks too, so that a few steps can fit them."""
    g = torch.Generator().manual_seed(seed)

    def blocks(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=(size, size), mode="nearest")

    def ids(classes: int) -> torch.Tensor:
        coarse = torch.randint(0, classes, (n, 1, cells, cells), generator=g)
        return blocks(coarse.float())[:, 0].long()

    image = blocks(torch.randn(n, 3, cells, cells, generator=g))
    return {
        "image": image + 0.1 * torch.randn(n, 3, size, size, generator=g),
        "semseg": ids(OUTPUTS["semseg"]),
        "human_parts": ids(OUTPUTS["human_parts"]),
        "sal": ids(2),
        "normals": F.normalize(blocks(torch.randn(n, 3, cells, cells, generator=g)), dim=1),
    }


def randomise(module: nn.Module, which: type = LowRank, seed: int = 0) -> None:
    """Give every low-rank update of type `which` a random, non-zero B."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, which):
                m.b.copy_(torch.randn(m.b.shape, generator=g) * 0.05)


def model_with(encoder: Encoder, backbone: SwinBackbone, tasks=TASKS) -> MultiTaskModel:
    return MultiTaskModel(encoder, build_decoders(backbone, {t: OUTPUTS[t] for t in tasks}))


def assert_same_features(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for task in a:
        for x, y in zip(a[task], b[task], strict=True):
            torch.testing.assert_close(x, y, atol=atol, rtol=1e-4)


def blocky_batch(n: int = 2, size: int = 32, cells: int = 4) -> dict:
    """Labels in the formats of benchmark/tasks.py, read off a blocky image (constant over
    cells x cells squares), so that a few optimiser steps can fit them."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(n, 3, cells, cells, generator=g)
    image = F.interpolate(coarse, size=(size, size), mode="nearest")

    def classes(channel: int, count: int) -> torch.Tensor:
        edges = torch.linspace(-1.5, 1.5, count - 1)
        return torch.bucketize(image[:, channel].contiguous(), edges)

    parts = classes(1, 7)
    parts[0, : size // 4] = 255  # some ignored pixels
    return {
        "image": image + 0.05 * torch.randn(n, 3, size, size, generator=g),
        "semseg": classes(0, OUTPUTS["semseg"]),
        "human_parts": parts,
        "sal": (image[:, 2] > 0).long(),
        "normals": F.normalize(image, dim=1),
    }


def expected_adapter(reduction: int = 1) -> int:
    # two adapters per block, each down d x m + m and up m x d + d
    adapters = sum(2 * (2 * d * (d // reduction) + d // reduction + d) for d in SWIN_T_BLOCKS)
    return adapters + SWIN_T_NORMS + DECODERS


# The shared stream of the last stage reaches no decoder, so the one TA-LoRA update that
# acts on it alone (fc2 of the very last block) trains nothing, as in the official code.
MTLORA_UNUSED = ("encoder.backbone.stages.3.blocks.1.block.mlp.fc2.shared.",)


# At 32 px (fake_batch's size) the last stage is one token: attention over a single key
# ignores the relative-position bias, whose tables there get a zero gradient and stay put.
ONE_TOKEN_TABLES = (
    "encoder.backbone.stages.3.blocks.0.attn.relative_position_bias_table",
    "encoder.backbone.stages.3.blocks.1.block.attn.relative_position_bias_table",
)


# The TPC LayerNorms of the blocks that are not last in their stage: created and counted
# as in the official code, never used (tiny model: two blocks per stage).
TADFORMER_UNUSED = tuple(f"encoder.backbone.stages.{s}.blocks.0.tpc_norm." for s in range(4))


def ditask_unused(stages: int = 4, depth: int = 2) -> tuple[str, ...]:
    """The trainable parameters the official code never gives a gradient (every qkv's task
    thetas; the shared thetas of proj, fc1, fc2 in the very last block)."""
    root = "encoder.backbone.stages"
    qkv = [f"{root}.{s}.blocks.{b}.{'block.' if b == depth - 1 else ''}attn.qkv.task_theta."
           for s in range(stages) for b in range(depth)]
    last = f"{root}.{stages - 1}.blocks.{depth - 1}"
    return (*qkv, f"{last}.proj.theta", f"{last}.block.mlp.fc1.theta",
            f"{last}.block.mlp.fc2.theta")
