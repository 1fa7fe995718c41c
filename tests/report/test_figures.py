"""The table of figures: one entry per figure, each with its own file, the trade-off figures
with a cost and an axis."""

from benchmark.report.figures import FIGURES
from benchmark.report.groups import Row


def test_every_figure_has_its_own_file_and_the_tradeoffs_a_cost_and_axis():
    assert [f.key for f in FIGURES] == ["params", "memory", "time", "change", "curves"]
    assert len({f.stem for f in FIGURES}) == len(FIGURES)
    tradeoffs = [f for f in FIGURES if f.cost is not None]
    assert [f.key for f in tradeoffs] == ["params", "memory", "time"]
    assert all(f.axis is not None and f.what for f in tradeoffs)
    assert [f.key for f in FIGURES if not f.error_bars] == ["curves"]
    runs = [{"seed": s, "params": {"trainable": 7}, "cost": {"peak_memory_mb": 10.0 + s,
                                                            "train_seconds": 2.0 * s}}
            for s in (0, 1)]
    row = Row("x", "lora", runs)
    assert [f.cost(row) for f in tradeoffs] == [[7.0], [10.0, 11.0], [0.0, 2.0]]
