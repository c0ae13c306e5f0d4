"""Live metrics through real processes: coordinator, SIMULATION enclave and the party CLI.

Two owners approve a job whose terms say ``--live-metrics`` (the review says
so in plain words): `detente party status` shows the latest value of each
metric, the released curve's values rounded. A job without the term leaves
no value of its evaluated curve anywhere the coordinator or the enclave's
host keeps anything (database, blobs, logs).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from protocols.live_metrics import rounded
from tests.e2e.conftest import (
    Running,
    assert_nowhere,
    contribute,
    credit_rows,
    detente,
    propose,
    untrusted_files,
    wait_state,
)

OPTIONS = ("--output", "model", "--output", "metrics", "--validation-fraction", "0.25")
OPTIONS += ("--rounds", "6", "--metrics-every", "2", "--param", "eval_metric=auc")


@pytest.fixture(scope="module")
def owners(running: Running, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("live")
    alice, a = contribute(running, "alice", credit_rows(0, 300), tmp)
    bob, b = contribute(running, "bob", credit_rows(300, 300), tmp)
    return {"alice": alice, "bob": bob, "datasets": [a, b], "tmp": tmp}


def _run(owners: dict[str, Any], *extra: str) -> tuple[str, str, dict[str, Any]]:
    """Propose, approve as both owners (bob's review text returned), wait, take the metrics."""
    job_id = propose(owners["alice"], owners["datasets"], *OPTIONS, *extra)
    detente(["party", "approve", job_id, "--yes"], owners["alice"])
    review = detente(["party", "approve", job_id, "--yes"], owners["bob"]).stdout
    assert wait_state(owners["alice"], job_id, ("succeeded", "failed"))["state"] == "succeeded"
    out: Path = owners["tmp"] / job_id
    detente(["party", "results", job_id, "--out", str(out), "--wait", "60"], owners["alice"])
    return job_id, review, json.loads((out / "metrics.json").read_text())


def test_live_metrics_without_a_stride_are_refused_before_proposing(owners):
    done = propose(owners["alice"], owners["datasets"], "--live-metrics", check=False)
    assert done.returncode != 0
    assert "--output metrics and --metrics-every N" in done.stderr
    assert "nothing was proposed" in done.stderr


def test_status_shows_the_latest_metric_the_owners_let_out(owners):
    job_id, review, metrics = _run(owners, "--live-metrics", "--seed", "1")
    assert (
        "live metrics: the enclave reports auc on the validation rows every 2 rounds to the "
        "coordinator IN THE CLEAR" in " ".join(review.split())
    )
    curve = metrics["curves"]["validation"]["auc"]
    assert metrics["evaluated_rounds"] == [2, 4, 6]
    status = json.loads(detente(["party", "status", job_id, "--json"], owners["bob"]).stdout)
    (latest,) = status["live_metrics"]
    assert latest == {
        "round": 6, "rounds": 6, "data": "validation", "metric": "auc", "value": rounded(curve[-1])
    }  # fmt: skip
    reported = [e["text"] for e in status["events"] if e["kind"] == "metric"]
    assert reported == [
        f"round {r}/6 validation auc {v:.4g}" for r, v in zip((2, 4, 6), curve, strict=True)
    ]
    text = detente(["party", "status", job_id], owners["bob"]).stdout
    assert f"latest validation auc: {curve[-1]:.4g} (round 6/6" in text


def test_without_the_term_no_value_of_the_curve_leaves_the_enclave(owners, running):
    # Another seed and metric: no value of this job's curve is one the first job let out.
    job_id, review, metrics = _run(owners, "--seed", "2", "--param", "eval_metric=logloss")
    assert "live metrics: none: the coordinator sees the rounds done" in review
    status = json.loads(detente(["party", "status", job_id, "--json"], owners["alice"]).stdout)
    assert status["live_metrics"] == []
    assert [e for e in status["events"] if e["kind"] == "metric"] == []
    assert any(e["kind"] == "round" for e in status["events"])
    values = [v for curves in metrics["curves"].values() for vs in curves.values() for v in vs]
    assert len(values) == 3
    encodings = {}
    for i, value in enumerate(values):
        encodings[f"value {i} exact"] = repr(value).encode()
        encodings[f"value {i} as an event writes it"] = f" {value:.4g}".encode()
        encodings[f"value {i} to 6 decimals"] = f"{value:.6f}".encode()
        encodings[f"value {i} as float64"] = struct.pack("<d", value)
    assert_nowhere(encodings, untrusted_files(running))
