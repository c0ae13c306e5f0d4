"""The dashboard's metric curves from a job's events, and charts drawn from numbers only."""

from __future__ import annotations

import re

from coordinator.dashboard.charts import line_chart, metric_chart
from coordinator.dashboard.curves import metric_series
from coordinator.store import EventRecord, JobRecord

NUMBERS_ONLY = re.compile(r"^[-+0-9.e ,:a-z]*$")


def _job(*texts: tuple[str, str]) -> JobRecord:
    events = [EventRecord(1000 + i, kind, text) for i, (kind, text) in enumerate(texts)]
    return JobRecord("job-1", b"", "00" * 32, "k", [], [], "running", "", 0, 0, events=events)


def test_each_metric_is_a_series_and_a_later_report_of_a_round_wins() -> None:
    series = metric_series(
        _job(
            ("round", "round 10/30"),
            ("metric", "round 10/30 validation auc 0.7"),
            ("metric", "round 10/30 validation logloss 0.6"),
            ("metric", "round 20/30 validation auc 0.8"),
            ("metric", "round 10/30 validation auc 0.71"),  # resumed: round 10 again
            ("metric", "round 30/30 validation auc nan"),  # not drawable
            ("metric", "round 40/30 validation auc 0.9"),  # past the rounds: not drawn
            ("metric", "garbage"),
            ("progress", "round 20/30 validation auc 0.99"),  # another kind: not a metric
        )
    )
    assert [(s.data, s.metric) for s in series] == [
        ("validation", "auc"),
        ("validation", "logloss"),
    ]
    assert [(p.round, p.value) for p in series[0].points] == [(10, 0.71), (20, 0.8)]
    assert [(p.round, p.value) for p in series[1].points] == [(10, 0.6)]


def test_charts_carry_numbers_only() -> None:
    curve = metric_chart([(10, 0.7123), (20, 0.8), (30, 0.8)], 30)
    assert [t for _, _, t in curve.points] == ["round 10: 0.7123", "round 20: 0.8", "round 30: 0.8"]
    flat = metric_chart([(5, 0.5)], 10)  # one point, or a flat curve, still has a y range
    assert flat.y_ticks[0][1] != flat.y_ticks[-1][1]
    progress = line_chart([(0.0, 0.0), (2.5, 10.0)], "seconds since start", "rounds", 30.0)
    for chart in (curve, flat, progress):
        texts = [t for _, _, t in chart.points] + [t for _, t in chart.x_ticks + chart.y_ticks]
        assert all(NUMBERS_ONLY.match(t) for t in texts), texts
        assert NUMBERS_ONLY.match(chart.polyline)
        xs = [x for x, _, _ in chart.points]
        assert xs == sorted(xs) and all(chart.plot[0] <= x <= chart.plot[2] for x in xs)
        ys = [y for _, y, _ in chart.points]
        assert all(chart.plot[1] <= y <= chart.plot[3] for y in ys)
