"""Confidence intervals over seeds and paired comparisons between configurations.

Every interval of the report is a two-sided 95 % Student t interval over seeds: for n values
with mean m and sample standard deviation s, m ± t_{0.975, n-1} · s / √n. A comparison of two
configurations is paired: it takes the per-seed differences over the seeds both ran (the
same seed shares the data order and the initialisation of what both train) and gives their
t interval, so the seed-to-seed variation common to both cancels. Two configurations cannot
be told apart ("tied") when that interval contains zero. Fewer than two values give no
interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy.stats import t as student_t

CONFIDENCE = 0.95
METHOD_TEXT = (
    "95 % confidence interval over seeds, Student t with n − 1 degrees of freedom "
    "(mean ± t₀.₉₇₅,ₙ₋₁ · s / √n)"
)


def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student t quantile for `n` values (n - 1 degrees of freedom)."""
    if n < 2:
        raise ValueError(f"a t interval needs at least two values, got {n}")
    return float(student_t.ppf(0.5 + confidence / 2, n - 1))


@dataclass(frozen=True)
class Interval:
    """The mean of `n` values and its confidence interval (None below two values)."""

    mean: float
    n: int
    half_width: float | None = None

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    @property
    def excludes_zero(self) -> bool | None:
        """Whether zero lies outside the interval; None without an interval."""
        if self.half_width is None or math.isnan(self.half_width) or math.isnan(self.mean):
            return None
        return self.low > 0 or self.high < 0


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval | None:
    """The t interval of the mean of `values`; None when there are none."""
    values = [float(v) for v in values]
    if not values:
        return None
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Interval(mean, 1)
    spread = statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, len(values), t_quantile(len(values), confidence) * spread)


@dataclass(frozen=True)
class Comparison:
    """`a - b` over the seeds both have: the interval of the per-seed differences."""

    seeds: tuple[int, ...]
    difference: Interval

    @property
    def tied(self) -> bool | None:
        """True when the interval contains zero; None when it cannot be given."""
        excludes = self.difference.excludes_zero
        return None if excludes is None else not excludes


def paired(
    a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE
) -> Comparison | None:
    """The paired comparison of two configurations' per-seed values (seed -> value);
    None when they share no seed."""
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        return None
    return Comparison(seeds, interval([a[s] - b[s] for s in seeds], confidence))


@dataclass(frozen=True)
class Standing:
    """A configuration against the best one and against full fine-tuning.

    `verdict`: "best"; "tied" (the paired interval against the best contains zero);
    "below" or "above" (it excludes zero, on that side); "" when it cannot be given
    (fewer than two shared seeds, or no best)."""

    verdict: str
    vs_best: Comparison | None = None
    vs_full_ft: Comparison | None = None


def standings(
    scores: Mapping[str, Mapping[int, float]], best: str | None, full_ft: str | None = None
) -> dict[str, Standing]:
    """The `Standing` of every configuration in `scores` (label -> seed -> score), against
    the label `best` and the label `full_ft` (either may be None or absent)."""
    out = {}
    for label, values in scores.items():
        vs_best = vs_full = None
        if best in scores and label != best:
            vs_best = paired(values, scores[best])
        if full_ft in scores and label != full_ft:
            vs_full = paired(values, scores[full_ft])
        if label == best:
            verdict = "best"
        elif vs_best is None or vs_best.tied is None:
            verdict = ""
        elif vs_best.tied:
            verdict = "tied"
        else:
            verdict = "below" if vs_best.difference.mean < 0 else "above"
        out[label] = Standing(verdict, vs_best, vs_full)
    return out
