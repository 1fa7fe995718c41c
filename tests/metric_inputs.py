"""Inputs shared by the meter tests: logits of given labels and random batches per task."""

from __future__ import annotations

import torch

IGN = 255


def one_hot_logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) class ids -> (N, C, H, W) logits whose argmax is those ids."""
    return torch.nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2).float() * 5 - 1


def logit(p) -> torch.Tensor:
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p)).float()


def random_binary_batch(seed: int, n=3, h=11, w=13, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 1, h, w, generator=g) * scale
    labels = (torch.rand(n, h, w, generator=g) < 0.35).long()
    labels[torch.rand(n, h, w, generator=g) < 0.1] = IGN
    return logits, labels


def sample_inputs(task: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    n, h, w = 2, 6, 7
    if task in ("semseg", "human_parts"):
        c = 5 if task == "semseg" else 7
        target = torch.randint(0, c, (n, h, w), generator=g)
        target[:, 0] = IGN
        return torch.randn(n, c, h, w, generator=g), target
    if task in ("sal", "edge"):
        return random_binary_batch(seed, n, h, w)
    if task == "normals":
        target = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
        target[:, :, 0] = 0
        return target + torch.randn(n, 3, h, w, generator=g), target
    target = torch.rand(n, 1, h, w, generator=g) * 5
    target[:, :, 0] = 0
    return target + torch.randn(n, 1, h, w, generator=g), target


NUM_OUTPUTS = {"semseg": 5, "human_parts": 7, "sal": 1, "normals": 3, "depth": 1, "edge": 1}


TASKS = list(NUM_OUTPUTS)
