"""Live metrics through a real worker: metric events only when the terms allow them.

With ``release.live_metrics`` the enclave reports each evaluation at the
terms' stride as ``metric`` events (protocols.live_metrics), each value the
released curve's value rounded; without it no event, and nothing in the
worker's log, carries any value of the curves the evaluation produced.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from worker_testkit import (
    Job,
    Owner,
    Worker,
    build_worker_instance,
    collect,
    make_table,
    open_outputs,
    run_job,
    seal_job,
)

from protocols import live_metrics
from protocols.live_metrics import MetricPoint

PARAMS = {"tree_method": "hist", "max_depth": 3, "nthread": 1, "eval_metric": ["auc", "logloss"]}


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(*build_worker_instance(tmp_path_factory.mktemp("worker") / "instance")).start()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def enclave(worker: Worker) -> tuple[Any, str, Any]:
    _der, verified = worker.client().verify()
    return verified.identity.hpke_key, verified.mrenclave, verified.identity.signing_key


def _job(enclave: Any, job_id: str, **fields: Any) -> Job:
    a, b = Owner("a"), Owner("b")
    terms: dict[str, Any] = {
        "params": PARAMS,
        "num_rounds": 10,
        "validation_fraction": 0.25,
        "metrics_every": 3,
        "outputs": ["model", "metrics"],
        **fields,
    }
    return seal_job(
        enclave[0],
        enclave[1],
        job_id,
        [(a, f"{job_id}-a", make_table(400, 1)), (b, f"{job_id}-b", make_table(250, 2))],
        objective="binary:logistic",
        id_column="id",
        **terms,
    )


def _run(worker: Worker, job: Job, enclave: Any) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    outputs, events = collect(run_job(worker, job))
    _, mine = open_outputs(job, outputs, enclave[2], job.owners[0])
    return json.loads(mine["metrics"]), events


def _values(metrics: dict[str, Any]) -> list[float]:
    return [v for curves in metrics["curves"].values() for vs in curves.values() for v in vs]


def test_metric_events_carry_the_released_curve_rounded_only_with_the_term(worker, enclave):
    metrics, events = _run(worker, _job(enclave, "job-live", live_metrics=True), enclave)
    assert metrics["evaluated_rounds"] == [3, 6, 9, 10]
    points = [MetricPoint.parse(t) for k, t in events if k == live_metrics.KIND]
    assert [(p.round, p.metric) for p in points] == [
        (r, m) for r in (3, 6, 9, 10) for m in ("auc", "logloss")
    ]
    for point in points:
        assert point.rounds == 10 and point.data == "validation"
        curve = metrics["curves"]["validation"][point.metric]
        exact = curve[metrics["evaluated_rounds"].index(point.round)]
        assert point.value == live_metrics.rounded(exact)
        assert len(point.to_text().split()[-1].replace(".", "").lstrip("0")) <= 4
    # Nothing else in the events says a value: the round events are as before.
    others = [t for k, t in events if k != live_metrics.KIND]
    assert not any(live_metrics.KIND in t for t in others)


def test_without_the_term_no_event_or_log_line_carries_a_metric_value(worker, enclave):
    job = _job(enclave, "job-quiet")
    assert not job.terms.live_metrics and "live_metrics" not in job.terms.to_dict()["release"]
    metrics, events = _run(worker, job, enclave)
    assert [k for k, _ in events if k == live_metrics.KIND] == []
    assert [t for k, t in events if k == "round"], events  # progress still reported
    log = (worker.instance / "worker-test.out").read_text()
    said = " ".join(t for _, t in events) + log
    values = _values(metrics)
    assert len(values) == 8
    for value in values:
        # The exact value and its rounded forms (as an event would carry them).
        for shown in {repr(value), f"{value:.4g}", f"{value:.5g}", f"{value:.6f}"}:
            assert shown not in said, shown


def test_with_early_stopping_the_stride_and_the_last_round_are_reported(worker, enclave):
    job = _job(
        enclave,
        "job-live-early",
        params={**PARAMS, "max_depth": 6, "eta": 0.6, "eval_metric": "logloss"},
        num_rounds=200,
        early_stopping_rounds=3,
        metrics_every=2,
        live_metrics=True,
    )
    metrics, events = _run(worker, job, enclave)
    trained = metrics["evaluated_rounds"][-1]
    assert trained < 200
    points = [MetricPoint.parse(t) for k, t in events if k == live_metrics.KIND]
    expected = [r for r in range(2, trained + 1, 2)]
    expected += [] if trained % 2 == 0 else [trained]
    assert [p.round for p in points] == expected
    curve = metrics["curves"]["validation"]["logloss"]
    assert [p.value for p in points] == [live_metrics.rounded(curve[r - 1]) for r in expected]
