"""Charts drawn as inline SVG on the server: no script, no external asset.

Only numbers reach the SVG (coordinates, axis labels and tooltips made from
numbers), so nothing a party or the enclave names is placed in it: the names
of metrics are written by the template around the chart, autoescaped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 60, 16, 12, 32


@dataclass(frozen=True)
class Chart:
    """An SVG line chart, as attribute values a template writes out (autoescaped)."""

    width: int
    height: int
    polyline: str  # "x,y x,y …"
    points: list[tuple[float, float, str]]  # (x, y, tooltip made of numbers)
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


def _value(value: float) -> str:
    """A metric value as the enclave reports it: 4 significant digits."""
    return f"{value:.4g}"


def line_chart(
    xy: Sequence[tuple[float, float]], x_label: str, y_label: str, y_max: float | None = None
) -> Chart:
    """Rounds done over time: a line through ``xy`` (seconds, rounds), y from 0 to ``y_max``."""
    y_top = max(y_max or 0.0, max((y for _, y in xy), default=0.0)) or 1.0
    return _chart(
        xy,
        (0.0, max((x for x, _ in xy), default=0.0) or 1.0),
        (0.0, y_top),
        (_number, _number),
        lambda x, y: f"round {_number(y)} at {_number(x)} s",
        (x_label, y_label),
    )


def metric_chart(points: Sequence[tuple[int, float]], rounds: int) -> Chart:
    """A metric's curve: (round, value) points, x from 0 to the terms' ``rounds``, y over the
    values' range (a little margin, so a flat curve still shows)."""
    values = [v for _, v in points]
    low, high = min(values, default=0.0), max(values, default=1.0)
    margin = (high - low) * 0.1 or abs(high) * 0.05 or 0.5
    return _chart(
        [(float(r), v) for r, v in points],
        (0.0, float(max(rounds, max((r for r, _ in points), default=1), 1))),
        (low - margin, high + margin),
        (_number, _value),
        lambda x, y: f"round {x:.0f}: {_value(y)}",
        ("round", "value"),
    )


def _chart(
    xy: Sequence[tuple[float, float]],
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    shown: tuple[Callable[[float], str], Callable[[float], str]],
    tooltip: Callable[[float, float], str],
    labels: tuple[str, str],
) -> Chart:
    left, top, right, bottom = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM
    (x0, x1), (y0, y1) = x_range, y_range

    def sx(x: float) -> float:
        return round(left + (right - left) * (x - x0) / (x1 - x0), 1)

    def sy(y: float) -> float:
        return round(bottom - (bottom - top) * (y - y0) / (y1 - y0), 1)

    points = [(sx(x), sy(y), tooltip(x, y)) for x, y in xy]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        polyline=" ".join(f"{x},{y}" for x, y, _ in points),
        points=points,
        x_ticks=[(sx(x0 + t), shown[0](x0 + t)) for t in _ticks(x1 - x0)],
        y_ticks=[(sy(y0 + t), shown[1](y0 + t)) for t in _ticks(y1 - y0)],
        x_label=labels[0],
        y_label=labels[1],
        plot=(left, top, right, bottom),
    )
