"""Methods that plug into the harness: one file per method, each a `Method` subclass."""

from methods.base import Method, freeze

__all__ = ["Method", "freeze"]
