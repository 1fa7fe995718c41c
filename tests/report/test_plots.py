"""Drawing: the Pareto front of a hand-made set."""

from benchmark.report.plots import pareto_front


def test_pareto_front_of_a_hand_made_set():
    points = {
        "tiny": (0.5, -5.0),   # cheapest: on the front however bad
        "a": (1.0, 0.0),
        "worse a": (1.0, -1.0),  # same cost, lower score
        "b": (2.0, 1.0),
        "b twin": (2.0, 1.0),  # identical points are both on the front
        "c": (3.0, 0.5),       # dominated by b
        "d": (4.0, 2.0),
        "e": (5.0, 2.0),       # same score as d, dearer
        "nan": (float("nan"), 9.0),
    }
    assert pareto_front(points) == ["tiny", "a", "b", "b twin", "d"]
    assert pareto_front({}) == []
