"""Methods that plug into the harness: one file per method, each a `Method` subclass
(`benchmark.method`); what they are built of is in `methods.blocks`."""

from benchmark.method import Method
from methods.blocks.inject import freeze

__all__ = ["Method", "freeze"]
