"""Figures of the report: Δm against cost with the Pareto front, and per-task change.

Everything here takes plain values (points, labels, colours), never records, so the report
decides what is plotted and this module only how. Figures are drawn on their own Agg canvas
(no pyplot state, no display needed) and saved as PNG and SVG with fixed metadata, so the
same numbers give the same SVG bytes.

Colours: one per configuration label, the same in every figure of every group. Labels of one
method share a hue (shades from light to dark in natural order, so `mtlora r=16/32/64`
darken with the rank) and a marker, so a figure stays readable in greyscale too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from benchmark.report.placement import Box, Colour, label_points, segment_obstacles, shade
from benchmark.report.statistics import interval
from benchmark.report.text import natural_key

REFERENCE_COLOUR: Colour = (0.3, 0.3, 0.3)
REFERENCE_MARKER = "*"
# no plus or cross shapes: they read as error bars
MARKERS = ("o", "s", "D", "^", "v", "<", ">", "p", "h", "d", "8", "H")
FORMATS = ("png", "svg")
PNG_DPI = 200
GRID_COLOUR = "#d9d9d9"

# Fixed salt and no dates: regenerating a figure from the same numbers gives the same SVG.
RC = {
    **sns.axes_style("whitegrid", {"grid.color": GRID_COLOUR}),
    **sns.plotting_context("paper"),
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 7.5,
    "svg.hashsalt": "mtpeft-report",
    "svg.fonttype": "path",
    "figure.dpi": 100,
}
SAVE_METADATA = {
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
}


@dataclass(frozen=True)
class Point:
    """One configuration in a trade-off figure: means and the half-widths of their 95 %
    intervals (None: n=1)."""

    label: str
    x: float
    y: float
    x_err: float | None = None
    y_err: float | None = None


@dataclass(frozen=True)
class Style:
    colour: Colour
    marker: str


def _half_width(values: Sequence[float]) -> float:
    """The half-width of the 95 % t interval of `values` (0 below two values)."""
    found = interval(values)
    return 0.0 if found is None or found.half_width is None else found.half_width


def assign_styles(labels: Iterable[tuple[str, str]], reference_method: str) -> dict[str, Style]:
    """Colour and marker per label from every (method, label) pair of the report.

    Depends only on the set of pairs, so every figure of every group agrees. The reference
    method is grey with a star.
    """
    by_method: dict[str, set[str]] = {}
    for method, label in labels:
        by_method.setdefault(method, set()).add(label)
    methods = sorted((m for m in by_method if m != reference_method), key=natural_key)
    # tab10 without its grey, which is the reference's; beyond nine methods, evenly spaced hues
    base = [c for i, c in enumerate(sns.color_palette("tab10", 10)) if i != 7]
    if len(methods) > len(base):
        base = sns.color_palette("husl", len(methods))
    styles: dict[str, Style] = {}
    for label in by_method.get(reference_method, ()):
        styles[label] = Style(REFERENCE_COLOUR, REFERENCE_MARKER)
    for index, method in enumerate(methods):
        variants = sorted(by_method[method], key=natural_key)
        amounts = np.linspace(0.35, -0.35, len(variants)) if len(variants) > 1 else [0.0]
        for label, amount in zip(variants, amounts):
            colour = tuple(float(c) for c in shade(tuple(base[index]), float(amount)))
            styles[label] = Style(colour, MARKERS[index % len(MARKERS)])
    return styles


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Labels of the points no other point dominates, minimising cost and maximising score.

    `points` maps a label to (cost, score). A point is dominated when another has a cost no
    higher and a score no lower, and is strictly better in one of them; identical points are
    all on the front. Points with a NaN coordinate take no part. Sorted by cost (then score,
    best first, then label).
    """
    valid = {k: v for k, v in points.items() if not any(math.isnan(c) for c in v)}
    front = [
        label
        for label, (cost, score) in valid.items()
        if not any(
            c <= cost and s >= score and (c < cost or s > score) for c, s in valid.values()
        )
    ]
    return sorted(front, key=lambda k: (valid[k][0], -valid[k][1], natural_key(k)))


# -- figures -------------------------------------------------------------------------------


def _limits(lo: float, hi: float, log: bool, pad: float) -> tuple[float, float]:
    if log:
        a, b = math.log10(lo), math.log10(hi)
        span = max(b - a, 0.5)
        return 10 ** (a - pad * span), 10 ** (b + pad * span)
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    return lo - pad * span, hi + pad * span


def _save(fig: Figure, stem: Path) -> list[Path]:
    paths = []
    for fmt in FORMATS:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, format=fmt, dpi=PNG_DPI, metadata=SAVE_METADATA[fmt])
        paths.append(path)
    return paths


def tradeoff_figure(
    points: Sequence[Point],
    styles: Mapping[str, Style],
    stem: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str = "Δm (%, higher is better)",
    log_x: bool | None = None,
) -> list[Path]:
    """Score against a cost, one labelled marker per configuration, the Pareto front dashed.

    `log_x` None chooses a log axis when the costs span more than a factor of 6. Writes
    `stem`.png and `stem`.svg and returns their paths.
    """
    points = [p for p in points if not (math.isnan(p.x) or math.isnan(p.y))]
    if not points:
        return []
    xs = [p.x for p in points]
    if log_x is None:
        log_x = min(xs) > 0 and max(xs) / min(xs) > 6
    log_x = log_x and min(xs) > 0
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(6.4, 4.4), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.axhline(0, color=REFERENCE_COLOUR, lw=0.8, ls=":", zorder=1)
        for p in points:
            style = styles[p.label]
            ax.errorbar(
                p.x, p.y, xerr=p.x_err, yerr=p.y_err, fmt=style.marker, color=style.colour,
                ms=9 if style.marker == REFERENCE_MARKER else 6.5, mec="white", mew=0.6,
                ecolor=style.colour, elinewidth=0.9, capsize=2.5, zorder=4,
            )
        front = pareto_front({p.label: (p.x, p.y) for p in points})
        by_label = {p.label: p for p in points}
        front_x = [by_label[k].x for k in front]
        front_y = [by_label[k].y for k in front]
        (front_line,) = ax.step(
            front_x, front_y, where="post", color="#505050", lw=1.0, ls="--", zorder=2,
            label="Pareto front",
        )

        lo_x = min(p.x - (p.x_err or 0) for p in points)
        hi_x = max(p.x + (p.x_err or 0) for p in points)
        if log_x:
            ax.set_xscale("log")
            lo_x = min(p.x for p in points) if lo_x <= 0 else lo_x
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(*_limits(lo_x, hi_x, log_x, 0.12))
        lo_y = min([p.y - (p.y_err or 0) for p in points] + [0.0])
        hi_y = max([p.y + (p.y_err or 0) for p in points] + [0.0])
        ax.set_ylim(*_limits(lo_y, hi_y, False, 0.12))
        if log_x and "log scale" not in xlabel:
            xlabel = xlabel[:-1] + ", log scale)" if xlabel.endswith(")") else xlabel + " (log)"
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(
            handles=[front_line, ax.lines[0]],
            labels=["Pareto front", "single-task reference (Δm = 0)"],
            loc="best", frameon=True, framealpha=0.9,
        )
        # Freeze the layout before measuring, so the label offsets stay valid when saving.
        fig.canvas.draw()
        fig.set_layout_engine("none")
        to_px = ax.transData.transform
        obstacles: list[Box] = []
        for p in points:
            x, y = to_px((p.x, p.y))
            obstacles.append((x - 5, y - 5, x + 5, y + 5))
            if p.y_err:
                _, y0 = to_px((p.x, p.y - p.y_err))
                _, y1 = to_px((p.x, p.y + p.y_err))
                obstacles.append((x - 3, y0, x + 3, y1))
            if p.x_err:
                x0, _ = to_px((max(p.x - p.x_err, ax.get_xlim()[0]), p.y))
                x1, _ = to_px((p.x + p.x_err, p.y))
                obstacles.append((x0, y - 3, x1, y + 3))
        obstacles += segment_obstacles(to_px(_step_vertices(front_x, front_y)))
        legend = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
        obstacles.append((legend.x0, legend.y0, legend.x1, legend.y1))
        label_points(ax, fig, points, styles, obstacles)
        return _save(fig, stem)


def _step_vertices(xs: Sequence[float], ys: Sequence[float]) -> np.ndarray:
    """Vertices of a `where="post"` staircase through the points."""
    out = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        out.append((x, y))
        if i + 1 < len(xs):
            out.append((xs[i + 1], y))
    return np.asarray(out, float).reshape(-1, 2)


def change_figure(
    changes: Mapping[str, Mapping[str, Sequence[float]]],
    groups: Sequence[str],
    styles: Mapping[str, Style],
    stem: Path,
    *,
    title: str,
    ylabel: str = "change vs single task (%, up is better)",
) -> list[Path]:
    """Grouped bars: for each group (a task, or Δm) one bar per label, the mean over seeds
    with its 95 % t interval as the error bar.

    `changes[label][group]` holds the per-seed values; labels are drawn in the given order.
    """
    labels = [k for k in changes if any(changes[k].get(g) for g in groups)]
    if not labels:
        return []
    n = len(labels)
    width = 0.8 / n
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(max(6.4, 1.6 + 0.16 * n * len(groups)), 4.2), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for i, label in enumerate(labels):
            values = [list(changes[label].get(g, ())) for g in groups]
            means = [float(np.mean(v)) if v else np.nan for v in values]
            errs = [_half_width(v) for v in values]
            centres = np.arange(len(groups)) - 0.4 + width * (i + 0.5)
            ax.bar(
                centres, means, width=width * 0.92, color=styles[label].colour, label=label,
                yerr=errs if any(errs) else None, error_kw={"elinewidth": 0.8, "capsize": 1.5},
                zorder=3,
            )
        ax.axhline(0, color="#303030", lw=0.8, zorder=4)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_xlim(-0.5, len(groups) - 0.5)
        for i in range(1, len(groups)):
            ax.axvline(i - 0.5, color=GRID_COLOUR, lw=0.8, zorder=1)
        ax.grid(axis="x", visible=False)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        fig.legend(loc="outside right upper", frameon=False, title="configuration")
        return _save(fig, stem)


def build_curves_figure(
    panels: Mapping[str, Mapping[str, object]],
    styles: Mapping[str, Style],
    *,
    title: str,
    columns: int = 4,
) -> Figure | None:
    """Small multiples: one panel per entry of `panels`, one line per configuration.

    `panels[title][label]` holds an object with `epochs`, `mean` and `half_width` (the
    95 % interval's half-width per epoch, or None), drawn as a line with a shaded band.
    None when there is nothing to draw."""
    panels = {k: v for k, v in panels.items() if v}
    if not panels:
        return None
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    labels = sorted({label for curves in panels.values() for label in curves}, key=natural_key)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(2.6 * columns + 1.8, 2.3 * rows + 0.6), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, columns, squeeze=False)
        for ax, (name, curves) in zip(axes.flat, panels.items()):
            for label in labels:
                if label not in curves:
                    continue
                curve, style = curves[label], styles[label]
                ax.plot(curve.epochs, curve.mean, color=style.colour, marker=style.marker,
                        ms=3, lw=1.1, label=label)
                bands = [(e, m, h) for e, m, h in zip(curve.epochs, curve.mean,
                                                      curve.half_width) if h is not None]
                if len(bands) > 1:
                    e, m, h = (np.asarray(v, float) for v in zip(*bands))
                    ax.fill_between(e, m - h, m + h, color=style.colour, alpha=0.15, lw=0)
            ax.set_title(name, fontsize=8.5)
            ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        handles = {}
        for ax in axes.flat:
            for line in ax.get_lines():
                handles.setdefault(line.get_label(), line)
        fig.legend([handles[k] for k in labels if k in handles],
                   [k for k in labels if k in handles],
                   loc="outside right upper", frameon=False, title="configuration")
        fig.suptitle(title, fontsize=10)
        return fig


def curves_figure(
    panels: Mapping[str, Mapping[str, object]],
    styles: Mapping[str, Style],
    stem: Path,
    *,
    title: str,
) -> list[Path]:
    """`build_curves_figure` saved as `stem`.png and `stem`.svg; [] when nothing is drawn.
    Saved with the fixed salt, so that its SVG ids are the same from the same numbers (the
    layout is that of the default settings, as it always was)."""
    fig = build_curves_figure(panels, styles, title=title)
    if fig is None:
        return []
    with matplotlib.rc_context({"svg.hashsalt": RC["svg.hashsalt"]}):
        return _save(fig, stem)
