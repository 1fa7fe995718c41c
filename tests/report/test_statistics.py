"""Confidence intervals over seeds, paired comparisons and the tie decision, against values
computed by hand."""

import math

import pytest

from benchmark.report import statistics as stats

T_975_2 = 4.302652729911275  # t_{0.975} with 2 degrees of freedom (tables)
T_975_1 = 12.706204736174707  # with 1 degree of freedom


def test_the_t_quantile_is_the_tabulated_one():
    assert stats.t_quantile(3) == pytest.approx(T_975_2, rel=1e-9)
    assert stats.t_quantile(2) == pytest.approx(T_975_1, rel=1e-9)
    with pytest.raises(ValueError):
        stats.t_quantile(1)


def test_interval_of_three_seeds_by_hand():
    # mean 2, sample sd 1 (deviations -1, 0, 1: sum of squares 2 over n - 1 = 2)
    found = stats.interval([1.0, 2.0, 3.0])
    assert found.mean == 2.0 and found.n == 3
    assert found.half_width == pytest.approx(T_975_2 / math.sqrt(3), rel=1e-9)
    assert found.low == pytest.approx(2 - 2.4841377118, abs=1e-9)
    assert found.high == pytest.approx(2 + 2.4841377118, abs=1e-9)
    assert found.excludes_zero is False  # [-0.48, 4.48]


def test_one_value_has_no_interval_and_none_is_none():
    one = stats.interval([5.0])
    assert (one.mean, one.n, one.half_width, one.low, one.excludes_zero) == (5.0, 1, None,
                                                                             None, None)
    assert stats.interval([]) is None


def test_paired_comparison_uses_the_shared_seeds_only():
    a = {0: 10.0, 1: 12.0, 2: 11.0, 7: 100.0}
    b = {0: 9.0, 1: 10.0, 2: 8.0}
    found = stats.paired(a, b)
    # differences 1, 2, 3: mean 2, sd 1
    assert found.seeds == (0, 1, 2)
    assert found.difference.mean == 2.0
    assert found.difference.half_width == pytest.approx(T_975_2 / math.sqrt(3), rel=1e-9)
    assert found.difference.low == pytest.approx(2 - 2.4841377118, abs=1e-9)
    assert found.tied is True  # the interval [-0.48, 4.48] contains zero
    # a constant gap: zero spread, the interval is the point, which excludes zero
    gap = stats.paired({0: 3.0, 1: 5.0, 2: 4.0}, {0: 2.0, 1: 4.0, 2: 3.0})
    assert gap.difference.mean == 1.0 and gap.difference.half_width == 0.0
    assert gap.tied is False
    assert stats.paired({0: 1.0}, {1: 1.0}) is None


def test_pairing_removes_the_variation_common_to_both():
    # the seeds move both configurations by the same amount: unpaired intervals overlap
    # widely, the paired one excludes zero
    shift = {0: -3.0, 1: 0.0, 2: 3.0}
    a = {s: 5.0 + v + 0.1 * s for s, v in shift.items()}
    b = {s: 4.0 + v for s, v in shift.items()}
    ia, ib = stats.interval(list(a.values())), stats.interval(list(b.values()))
    assert ia.low < ib.high  # unpaired: cannot be told apart
    found = stats.paired(a, b)
    # differences 1.0, 1.1, 1.2: mean 1.1, sd 0.1
    assert found.difference.mean == pytest.approx(1.1)
    assert found.difference.half_width == pytest.approx(T_975_2 * 0.1 / math.sqrt(3))
    assert found.tied is False


def test_standings_mark_ties_and_clear_gaps():
    seeds = (0, 1, 2)
    scores = {
        "best": {s: v for s, v in zip(seeds, (6.0, 5.0, 7.0))},
        # differences to best -0.5, +0.5, -0.3: interval contains zero -> tied
        "close": {s: v for s, v in zip(seeds, (5.5, 5.5, 6.7))},
        # differences -4.0, -4.2, -3.8: far below, interval excludes zero
        "far": {s: v for s, v in zip(seeds, (2.0, 0.8, 3.2))},
        "full_ft": {s: v for s, v in zip(seeds, (5.0, 4.0, 6.0))},  # always 1 below best
        "one seed": {0: 6.5},
    }
    out = stats.standings(scores, "best", "full_ft")
    assert out["best"].verdict == "best" and out["best"].vs_best is None
    assert out["close"].verdict == "tied"
    assert out["far"].verdict == "below"
    assert out["full_ft"].verdict == "below"  # a constant gap of one point
    assert out["full_ft"].vs_full_ft is None
    assert out["one seed"].verdict == ""  # one shared seed: cannot be told
    assert out["far"].vs_full_ft.difference.mean == pytest.approx(-3.0)
    assert out["close"].vs_best.difference.mean == pytest.approx(-0.1)
    half = T_975_2 * math.sqrt(((-0.4) ** 2 + 0.6 ** 2 + (-0.2) ** 2) / 2) / math.sqrt(3)
    assert out["close"].vs_best.difference.half_width == pytest.approx(half)
