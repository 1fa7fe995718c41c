"""Numerical precision of training and evaluation (`budget.precision`, `budget.eval_precision`).

- `bf16`: bfloat16 autocast on CUDA (the default for training);
- `fp16`: float16 autocast with a gradient scaler (the recipe of the official MTLoRA code);
- `fp32`: no autocast; on CUDA the float32 matrix multiplies are set to full float32
  (`torch.set_float32_matmul_precision("highest")`, TF32 off), so that fp32 means fp32.

Evaluation runs in `fp32` unless `budget.eval_precision` says otherwise. A CPU trains and
evaluates in float32 whatever the setting (autocast there is slower, not faster); records
hold the precision that was in effect (`cost.precision`, `cost.eval_precision`).

`budget.amp` is the deprecated spelling: `amp=true` is `precision=bf16`, `amp=false` is
`precision=fp32`. The two spellings of the same setting give the same run key: a run's key
holds `amp` for bf16 and fp32 (as it did before `precision` existed) and `precision` for
fp16, and `eval_precision` only when it is not fp32 (`key_budget`).
"""

from __future__ import annotations

import contextlib
import sys

import torch

from benchmark.errors import UserError

PRECISIONS = ("bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def training_precision(budget) -> str:
    """The training precision a budget asks for, the deprecated `amp` mapped."""
    precision = str(budget.get("precision") or "bf16")
    amp = budget.get("amp")
    if amp is None:
        return precision
    implied = "bf16" if amp else "fp32"
    if precision not in ("bf16", implied):  # bf16 is the default: `amp` decides
        raise UserError(
            f"budget.amp={str(amp).lower()} contradicts budget.precision={precision}; "
            "drop budget.amp (deprecated), precision says it"
        )
    return implied


def evaluation_precision(budget) -> str:
    return str(budget.get("eval_precision") or "fp32")


def check_budget(budget, warn: bool = True) -> None:
    """Bad precision settings as a `UserError`, before anything trains."""
    if budget.get("amp") is not None and not isinstance(budget.get("amp"), bool):
        raise UserError(f"budget.amp must be true or false, got {budget.amp!r}")
    for key, value in (
        ("precision", str(budget.get("precision") or "bf16")),
        ("eval_precision", evaluation_precision(budget)),
    ):
        if value not in PRECISIONS:
            raise UserError(f"budget.{key}={value} is unknown; choose from {', '.join(PRECISIONS)}")
    precision = training_precision(budget)
    if warn and budget.get("amp") is not None:
        print(f"budget.amp is deprecated; it means budget.precision={precision}", file=sys.stderr)


def key_budget(budget: dict) -> dict:
    """The budget as it enters a run key: the legacy `amp` for bf16 and fp32, `precision`
    only for fp16, `eval_precision` only when not fp32 (so that keys made before these
    options existed stay the same)."""
    out = {k: v for k, v in budget.items() if k not in ("amp", "precision", "eval_precision")}
    precision = training_precision(budget)
    if precision == "fp16":
        out["precision"] = precision
    else:
        out["amp"] = precision == "bf16"
    if evaluation_precision(budget) != "fp32":
        out["eval_precision"] = evaluation_precision(budget)
    return out


def effective(device: torch.device, precision: str) -> str:
    """The precision in effect on `device` (float32 on a CPU)."""
    return precision if device.type == "cuda" else "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context of `precision` on `device` (none for fp32 or off CUDA)."""
    precision = effective(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(device: torch.device, precision: str):
    """A gradient scaler for fp16 training on CUDA, else None."""
    if effective(device, precision) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def set_matmul_precision(device: torch.device, precision: str) -> None:
    """fp32 on CUDA means float32 matrix multiplies (TF32 off), said explicitly."""
    if effective(device, precision) == "fp32" and device.type == "cuda":
        torch.set_float32_matmul_precision("highest")
