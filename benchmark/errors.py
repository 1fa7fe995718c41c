"""Errors that a user can fix: the command line prints them as one line and exits 2."""

from __future__ import annotations

import os
import sys
import traceback

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """Bad input (an unknown name, an invalid value, a missing file), with how to fix it."""


def report_user_error(err: UserError) -> int:
    """Print `err` as one line on stderr (once, from rank 0 under torchrun; with its
    traceback too when HYDRA_FULL_ERROR=1) and return the exit status of bad input."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exc()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"error: {err}", file=sys.stderr)
    return EXIT_BAD_INPUT


def first_line(err: BaseException) -> str:
    """`err`'s message as one line: its first non-empty line, stripped ("" when it has none),
    and where hydra lists the choices on the lines after it ("Available options ..."), those
    choices."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return ""
    text = lines[0]
    if len(lines) > 1 and lines[1].startswith("Available options"):
        end = next((i for i, line in enumerate(lines) if line.startswith("Config search")), None)
        text += f"; choose from {', '.join(lines[2:end])}"
    return text
