"""How a run executes: the top-level keys of `conf/config.yaml` that change the speed of
training, never what it computes beyond rounding (`benchmark.train` reads them)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig


@dataclass(frozen=True)
class Execution:
    """How a run executes (the top-level keys of the same names in `conf/config.yaml`)."""

    compile: bool = False  # torch.compile the model for training
    channels_last: bool = False  # NHWC images and convolution weights
    data_on_gpu: float = 0.25  # share of free GPU memory the training split may take
    prefetch: int = 2  # batches prepared ahead when the data stays in host memory
    fused_attn: bool = False  # timm's attention through scaled_dot_product_attention
    eval_every: int = 0  # epochs between validation passes for the curves (0: only at the end)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Execution:
        return cls(
            compile=bool(cfg.compile),
            channels_last=bool(cfg.channels_last),
            data_on_gpu=float(cfg.data_on_gpu),
            prefetch=int(cfg.prefetch),
            fused_attn=bool(cfg.get("fused_attn", False)),
            eval_every=int(cfg.get("eval_every", 0)),
        )
