"""How the report writes names and numbers: markdown-safe text, fixed digits, natural order."""

from __future__ import annotations

import math
import re

MISSING = "–"


def md(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def number(value: float, digits: int, sign: bool = False) -> str:
    if math.isnan(value):
        return "NaN"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def error_text(run: dict) -> str:
    """A run's error on one line."""
    return " ".join(str(run.get("error") or "unknown error").split())


def natural_key(text: str) -> list:
    """Sort key that orders `r=16` before `r=128`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
