"""What several test files share: running a command, the tasks of the tiny models and the
tiny models themselves, Swin-T's layout and the count formulas built on it, and the
overfitting and gradient checks of every method."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from benchmark.backbone import SwinBackbone, build_backbone
from benchmark.config import CONF_DIR
from benchmark.data import Split
from benchmark.losses import MultiTaskLoss
from benchmark.model import MultiTaskModel

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
