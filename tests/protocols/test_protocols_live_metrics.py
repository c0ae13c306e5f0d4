"""The live-metrics term of job terms and the text of a ``metric`` event."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
from test_protocols_sealed_models import terms_for

from protocols import canonical, statements
from protocols.documents import JobTerms
from protocols.errors import FormatError
from protocols.keys import SigningKey
from protocols.live_metrics import MetricPoint, latest, points_of, rounded


def test_the_term_round_trips_and_is_absent_when_off() -> None:
    key = SigningKey.generate()
    off = terms_for(key)
    assert off.live_metrics is False
    # Off: the document (and the digest of terms proposed before the term existed) is as before.
    assert "live_metrics" not in off.to_dict()["release"]
    on = replace(off, live_metrics=True, metrics_every=2)
    assert on.to_dict()["release"]["live_metrics"] is True
    again = JobTerms.verify(on.sign(key))
    assert again == on and again.live_metrics
    assert on.sign(key).digest != replace(on, live_metrics=False).sign(key).digest


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"metrics_every": None}, "set training.metrics_every"),
        ({"outputs": ["model"]}, "release 'metrics'"),
    ],
)
def test_live_metrics_need_released_metrics_and_a_stride(
    changes: dict[str, Any], message: str
) -> None:
    key = SigningKey.generate()
    terms = replace(terms_for(key), **{"live_metrics": True, "metrics_every": 2, **changes})
    with pytest.raises(FormatError, match=message):
        JobTerms.verify(terms.sign(key))


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_live_metrics_field_that_is_not_a_boolean_is_refused(value: Any) -> None:
    key = SigningKey.generate()
    doc = replace(terms_for(key), metrics_every=2).to_dict()
    doc["release"]["live_metrics"] = value
    envelope = statements.sign(statements.JOB_TERMS, doc, key)
    with pytest.raises(FormatError, match="live_metrics must be true or false"):
        JobTerms.verify(envelope)
    assert canonical.loads(envelope.payload, "terms")["release"]["live_metrics"] == value


def test_an_event_carries_the_value_to_four_significant_digits() -> None:
    point = MetricPoint(20, 100, "validation", "logloss", 0.412745678)
    assert point.to_text() == "round 20/100 validation logloss 0.4127"
    assert MetricPoint.parse(point.to_text()) == replace(point, value=0.4127)
    assert rounded(12345.678) == 12350.0
    assert MetricPoint(3, 9, "train", "error@0.6", 1e-7).to_text().endswith(" 1e-07")
    nan = MetricPoint.parse("round 1/2 train auc nan")
    assert math.isnan(nan.value) and not nan.finite


@pytest.mark.parametrize(
    "text",
    [
        "round 10/100",  # a round event
        "round 10/100 holdout auc 0.5",  # neither validation nor train
        "round 10/100 validation auc 0.5 extra",
        "round x/100 validation auc 0.5",
        "round 10/100 validation auc <script>",
        "",
    ],
)
def test_texts_that_are_not_metric_events_are_refused(text: str) -> None:
    with pytest.raises(FormatError, match="round R/N DATA METRIC VALUE"):
        MetricPoint.parse(text)


def test_names_with_spaces_are_not_written() -> None:
    with pytest.raises(FormatError):
        MetricPoint(1, 2, "validation", "a b", 0.5).to_text()
    with pytest.raises(FormatError):
        MetricPoint(1, 2, "other", "auc", 0.5).to_text()


def test_the_latest_point_per_metric_wins_and_other_events_are_skipped() -> None:
    events = [
        ("round", "round 10/30"),
        ("metric", "round 10/30 validation auc 0.7"),
        ("metric", "round 10/30 validation logloss 0.6"),
        ("metric", "not a metric text"),
        ("metric", "round 20/30 validation auc 0.8"),
        # A resumed job reports round 10 again after round 20 was reported: 20 stays latest.
        ("metric", "round 10/30 validation auc 0.71"),
    ]
    points = points_of(events)
    assert len(points) == 4
    found = latest(points)
    assert found[("validation", "auc")].value == 0.8
    assert found[("validation", "logloss")].round == 10
