"""Live metrics: evaluation metrics the enclave reports in the clear while it trains.

Only terms with ``release.live_metrics = true`` (protocols/SPEC.md §3.4) let
them out: every data owner approved that the coordinator — its operator, its
dashboard and every party that may read the job — sees them. Without it the
enclave reports the rounds done and nothing of the metrics.

Each evaluation of each metric is one progress event of kind ``metric``
whose text is ``round R/N DATA METRIC VALUE``::

    round 20/100 validation logloss 0.4127

``R`` is the 1-based round just evaluated, ``N`` the terms' rounds, ``DATA``
``validation`` (the held-out rows) or ``train`` (the training rows, when the
terms hold none out), ``METRIC`` the name XGBoost gives the metric (from the
terms' ``eval_metric``; no spaces), ``VALUE`` the value rounded to
:data:`SIGNIFICANT_DIGITS` significant digits as Python's ``format(v, ".4g")``
writes it (``0.4127``, ``1.235e+04``, ``nan``, ``inf``). An aggregate over the
evaluated rows, never a row's value; the rounding keeps a curve readable and
tells less about single rows than the full float would.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from protocols.errors import FormatError

KIND = "metric"
SIGNIFICANT_DIGITS = 4
DATA = ("validation", "train")
_TEXT = re.compile(r"^round (\d+)/(\d+) (validation|train) (\S+) (\S+)$")


def rounded(value: float) -> float:
    """``value`` to :data:`SIGNIFICANT_DIGITS` significant digits, as the event carries it."""
    return float(_show(value))


def _show(value: float) -> str:
    return format(float(value), f".{SIGNIFICANT_DIGITS}g")


@dataclass(frozen=True)
class MetricPoint:
    """One evaluated metric: round ``round`` of ``rounds``, on ``data`` rows, and its value."""

    round: int
    rounds: int
    data: str
    metric: str
    value: float

    def to_text(self) -> str:
        """The event text; the value rounded (:func:`rounded`)."""
        if self.data not in DATA or not self.metric or any(c.isspace() for c in self.metric):
            raise FormatError(f"a live metric needs data in {DATA} and a name without spaces")
        return f"round {self.round}/{self.rounds} {self.data} {self.metric} {_show(self.value)}"

    @classmethod
    def parse(cls, text: str) -> MetricPoint:
        """The point a ``metric`` event's text states; FormatError if it is not one."""
        match = _TEXT.match(text)
        value = None
        if match:
            try:
                value = float(match.group(5))
            except ValueError:
                pass
        if match is None or value is None:
            raise FormatError(
                f"a live metric event reads 'round R/N DATA METRIC VALUE', not {text[:80]!r}"
            )
        return cls(int(match.group(1)), int(match.group(2)), match.group(3), match.group(4), value)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.value)


def latest(points: list[MetricPoint]) -> dict[tuple[str, str], MetricPoint]:
    """The last reported point of each (data, metric), by round (a resumed job reports the
    rounds after its checkpoint again; the later report of a round wins)."""
    found: dict[tuple[str, str], MetricPoint] = {}
    for point in points:
        key = (point.data, point.metric)
        if key not in found or point.round >= found[key].round:
            found[key] = point
    return found


def points_of(events: list[tuple[str, str]]) -> list[MetricPoint]:
    """The metric points among ``(kind, text)`` events, in order; other events and texts that
    do not parse are skipped (the coordinator relays what the enclave sends)."""
    points = []
    for kind, text in events:
        if kind != KIND:
            continue
        try:
            points.append(MetricPoint.parse(text))
        except FormatError:
            continue
    return points
