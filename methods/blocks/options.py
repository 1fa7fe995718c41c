"""Checks of a method's constructor arguments: each returns the value in its canonical form
or raises a ValueError in one line naming the option and what it must be."""

from __future__ import annotations

from collections.abc import Sequence


def positive_ints(**options: object) -> list[int]:
    """The values of `options` as ints, in order; a ValueError naming the first option that
    is not a whole number >= 1."""
    values = []
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value \
                or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
        values.append(int(value))
    return values


def dropout_rate(value: float, key: str = "dropout") -> float:
    """A dropout probability in [0, 1), as a float."""
    if not 0 <= value < 1:
        raise ValueError(f"{key} must be in [0, 1), got {value}")
    return float(value)


def flag(key: str, value: object) -> bool:
    """A true-or-false option (not 0 or 1)."""
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def choice(key: str, value: object, choices: Sequence[str]) -> str:
    """One of `choices`."""
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def tasks_per_pass_option(value: object) -> int | None:
    """A per-task method's `tasks_per_pass` option: None (every task in one pass) or a
    whole number >= 1, as an int; a ValueError otherwise."""
    if value is None:
        return None
    try:
        (count,) = positive_ints(tasks_per_pass=value)
    except ValueError:
        message = f"tasks_per_pass must be a whole number >= 1 or null, got {value!r}"
        raise ValueError(message) from None
    return count
