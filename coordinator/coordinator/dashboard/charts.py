"""Charts drawn as inline SVG on the server: no script, no external asset.

Only numbers reach the SVG (coordinates, axis labels made from numbers), so
nothing a party controls is placed in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 16, 12, 32


@dataclass(frozen=True)
class Chart:
    """An SVG line chart, as attribute values a template writes out (autoescaped)."""

    width: int
    height: int
    polyline: str  # "x,y x,y …"
    points: list[tuple[float, float, str]]  # (x, y, tooltip)
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]
    x_label: str
    y_label: str
    plot: tuple[float, float, float, float]  # left, top, right, bottom


def _ticks(top: float, count: int = 4) -> list[float]:
    if top <= 0:
        return [0.0]
    return [top * i / count for i in range(count + 1)]


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def line_chart(
    xy: Sequence[tuple[float, float]], x_label: str, y_label: str, y_max: float | None = None
) -> Chart:
    """A line through ``xy`` (in order) scaled into the plot area; y from 0 to ``y_max``."""
    x_top = max((x for x, _ in xy), default=0.0) or 1.0
    y_top = max(y_max or 0.0, max((y for _, y in xy), default=0.0)) or 1.0
    left, top, right, bottom = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM

    def sx(x: float) -> float:
        return round(left + (right - left) * x / x_top, 1)

    def sy(y: float) -> float:
        return round(bottom - (bottom - top) * y / y_top, 1)

    points = [(sx(x), sy(y), f"{_number(y)} at {_number(x)} s") for x, y in xy]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        polyline=" ".join(f"{x},{y}" for x, y, _ in points),
        points=points,
        x_ticks=[(sx(t), _number(t)) for t in _ticks(x_top)],
        y_ticks=[(sy(t), _number(t)) for t in _ticks(y_top)],
        x_label=x_label,
        y_label=y_label,
        plot=(left, top, right, bottom),
    )
