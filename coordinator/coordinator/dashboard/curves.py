"""The metric curves of a job, from the ``metric`` events its enclave streamed in the clear.

The enclave sends them only when every data owner approved terms with
``release.live_metrics`` (protocols.live_metrics); for other jobs there are
none, and the dashboard says the metrics are encrypted to the recipients.
Names come from the enclave's events: they are data for the templates
(autoescaped), never placed in a chart's SVG, which takes numbers only.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from coordinator.store import JobRecord
from protocols.live_metrics import MetricPoint, points_of

LIVE_NOTE = (
    "Every data owner approved terms that let the enclave report these metrics to the "
    "coordinator in the clear while it trains (release.live_metrics), rounded to 4 significant "
    "digits. The released metrics keep the exact values, encrypted to the job's recipients."
)
ENCRYPTED_NOTE = (
    "The released metrics are encrypted to the job's recipients, and the terms do not let the "
    "enclave report them live: the coordinator cannot read them, so it charts only the rounds "
    "the enclave reports in the clear."
)


class MetricValue(BaseModel):
    round: int = Field(description="1-based round the metric was evaluated after")
    value: float = Field(description="rounded to 4 significant digits by the enclave")


class MetricSeries(BaseModel):
    """One metric's curve on one kind of rows, in round order."""

    data: str = Field(description="validation (held-out rows) or train (the training rows)")
    metric: str = Field(description="XGBoost's name of the metric, as the enclave reported it")
    points: list[MetricValue]


def metric_series(job: JobRecord) -> list[MetricSeries]:
    """Each (data, metric) the job's events report, in the order first reported.

    A resumed job reports the rounds after its checkpoint again: the later
    report of a round replaces the earlier one. Values that are not finite
    (an AUC of a single class is NaN) cannot be drawn and are left out.
    """
    by_name: dict[tuple[str, str], dict[int, float]] = {}
    for point in points_of([(e.kind, e.text) for e in job.events]):
        curve = by_name.setdefault((point.data, point.metric), {})
        if _drawable(point):
            curve[point.round] = point.value
        else:
            curve.pop(point.round, None)
    return [
        MetricSeries(
            data=data,
            metric=metric,
            points=[MetricValue(round=r, value=v) for r, v in sorted(curve.items())],
        )
        for (data, metric), curve in by_name.items()
    ]


def _drawable(point: MetricPoint) -> bool:
    return point.finite and 0 < point.round <= point.rounds
