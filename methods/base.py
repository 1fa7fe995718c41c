"""What a method needs from the harness, in one import, and how the harness makes one.

The method protocol (`Method`, the encoders and their modes) lives in `benchmark.method`;
it is re-exported here with `freeze`, so that a method of your own package needs only
`from methods.base import Encoder, Method, freeze`. The building blocks of the shipped
methods are in `methods.blocks`.
"""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from benchmark.errors import UserError
from benchmark.method import Encoder, Method
from methods.blocks.inject import freeze

__all__ = ["Encoder", "Method", "freeze", "instantiate_method"]


def instantiate_method(method_cfg: DictConfig) -> Method:
    try:
        method = instantiate(method_cfg)
    except InstantiationException as err:
        cause = err.__cause__ or err
        message = " ".join(str(cause).split())
        raise UserError(f"method {method_cfg.get('name')}: {message}") from None
    if not isinstance(method, Method):
        raise UserError(
            f"method._target_ {method_cfg.get('_target_')} is not a methods.base.Method subclass"
        )
    return method
