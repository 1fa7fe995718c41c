"""Where a figure's point labels go: beside their point, off the other labels, the markers,
the lines and the legend, joined to the point by a thin line when they had to move away.

Greedy and deterministic: the same points give the same places, so the same SVG bytes.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

Colour = tuple[float, float, float]
LABEL_FONT_SIZE = 7.5
LEADER_FROM = 12  # pixels between a point and its label beyond which a line joins them

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in display pixels


def _overlap(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _outside(box: Box, frame: Box) -> float:
    area = (box[2] - box[0]) * (box[3] - box[1])
    return area - _overlap(box, frame)


def _inside(x: float, y: float, box: Box) -> bool:
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def _leader_hits(
    start: tuple[float, float], box: Box, others: Sequence[Box], skip: float = 7.0
) -> int:
    """How many samples of the leader line from `start` to `box` fall inside `others`."""
    x, y = start
    ex, ey = min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3])
    length = math.hypot(ex - x, ey - y)
    hits = 0
    for k in range(int(skip // 3), int(length // 3) + 1):
        t = min(3 * k / length, 1.0) if length else 1.0
        px, py = x + (ex - x) * t, y + (ey - y) * t
        hits += sum(_inside(px, py, other) for other in others)
    return hits


def place_labels(
    anchors: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[float, float]],
    obstacles: Sequence[Box],
    frame: Box,
) -> list[tuple[float, float, float]]:
    """Centre of each label box and its distance from the anchor (display pixels), chosen
    greedily around the anchor.

    Each label tries rings of candidate positions at growing distance from its point and
    takes the one whose box and leader line overlap the labels already placed, the obstacles
    (markers, error bars, lines, legend) and the outside of `frame` least, preferring near
    positions and the right side. Crowded points choose first. Deterministic.
    """
    angles = [math.radians(a) for a in (0, 30, -30, 60, -60, 90, -90, 120, -120, 150, -150, 180)]
    radii = (5, 10, 18, 28, 40, 55, 75, 100)

    def crowding(i: int) -> int:
        x, y = anchors[i]
        return sum(math.hypot(x - u, y - v) < 60 for u, v in anchors)

    order = sorted(range(len(anchors)), key=lambda i: (-crowding(i), anchors[i]))
    placed: list[Box] = []
    centres: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)] * len(anchors)
    for i in order:
        (x, y), (w, h) = anchors[i], sizes[i]
        best = None
        for ring, radius in enumerate(radii):
            for turn, angle in enumerate(angles):
                cx = x + math.cos(angle) * (radius + w / 2)
                cy = y + math.sin(angle) * (radius + h / 2)
                box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                cost = (
                    20 * sum(_overlap(box, other) for other in placed)
                    + 8 * sum(_overlap(box, other) for other in obstacles)
                    + 50 * _outside(box, frame)
                    + 12 * ring
                    + turn
                )
                if ring > 1 and (best is None or cost < best[0]):
                    cost += 60 * _leader_hits((x, y), box, placed)
                    cost += 15 * _leader_hits((x, y), box, obstacles)
                if best is None or cost < best[0]:
                    best = (cost, (cx, cy, radius), box)
        _, centres[i], box = best
        placed.append(box)
    return centres


def label_points(
    ax, fig: Figure, points: Sequence, styles: Mapping, obstacles: list[Box]
) -> None:
    """Write each point's label where `place_labels` puts it, in a dark shade of the point's
    colour, joined to the point by a thin line when it had to move away."""
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    anchors = [tuple(to_px((p.x, p.y))) for p in points]
    sizes = []
    for p in points:
        text = ax.text(0, 0, p.label, fontsize=LABEL_FONT_SIZE)
        extent = text.get_window_extent(renderer)
        sizes.append((extent.width + 4, extent.height + 2))
        text.remove()
    frame = ax.get_window_extent(renderer)
    frame_box = (frame.x0 + 2, frame.y0 + 2, frame.x1 - 2, frame.y1 - 2)
    centres = place_labels(anchors, sizes, obstacles, frame_box)
    points_per_px = 72 / fig.dpi
    for p, (ax_px, ay_px), (cx, cy, radius) in zip(points, anchors, centres):
        dx, dy = cx - ax_px, cy - ay_px
        far = radius > LEADER_FROM
        ax.annotate(
            p.label,
            xy=(p.x, p.y),
            xytext=(dx * points_per_px, dy * points_per_px),
            textcoords="offset points",
            ha="center",
            va="center",
            fontsize=LABEL_FONT_SIZE,
            color=shade(styles[p.label].colour, -0.45),
            zorder=5,
            arrowprops=(
                {"arrowstyle": "-", "color": styles[p.label].colour, "lw": 0.7,
                 "shrinkA": 1, "shrinkB": 4}
                if far
                else None
            ),
        )


def segment_obstacles(xy_px: np.ndarray, step: float = 6.0, half: float = 2.0) -> list[Box]:
    """Small boxes along a polyline (display pixels), so labels keep off it."""
    boxes = []
    for (x0, y0), (x1, y1) in zip(xy_px[:-1], xy_px[1:]):
        n = max(int(math.hypot(x1 - x0, y1 - y0) / step), 1)
        for t in np.linspace(0, 1, n + 1):
            x, y = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
            boxes.append((x - half, y - half, x + half, y + half))
    return boxes


def shade(colour: Colour, amount: float) -> Colour:
    """Lighten (amount > 0) or darken (amount < 0) a colour, keeping its hue."""
    h, lightness, s = colorsys.rgb_to_hls(*colour)
    target = 1.0 if amount > 0 else 0.0
    lightness = lightness + (target - lightness) * abs(amount)
    return colorsys.hls_to_rgb(h, lightness, s)
