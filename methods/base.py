"""What a method needs from the harness, in one import.

The method protocol (`Method`, the encoders and their modes) lives in `benchmark.method`;
it is re-exported here with `freeze`, so that a method of your own package needs only
`from methods.base import Encoder, Method, freeze`. The building blocks of the shipped
methods are in `methods.blocks`; the configuration layer makes a method from its config
(`benchmark.config.instantiate_method`).
"""

from __future__ import annotations

from benchmark.method import Encoder, Method
from methods.blocks.inject import freeze

__all__ = ["Encoder", "Method", "freeze"]
