"""The prediction benchmark queries a real sealed model and reports its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_bench_predict_reports_latency_throughput_and_the_target(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *[sys.executable, "-m", "experiments.bench_predict", "--train-rows", "3000"],
            *["--features", "5", "--rounds", "5", "--batches", "1,100,10000", "--max-repeats", "5"],
            *["--workdir", str(tmp_path / "work"), "--timeout", "500", "--json"],
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("{") :])
    assert [b["rows"] for b in report["batches"]] == [1, 100, 10_000]
    for batch in report["batches"]:
        assert 0 < batch["p50_s"] <= batch["p99_s"]
        assert batch["rows_per_s"] > 0 and batch["local_p50_s"] > 0
    assert report["round_trip_s"] == report["batches"][0]["p50_s"]
    assert report["target"]["bound_s"] > report["round_trip_s"]
    assert isinstance(report["target"]["met"], bool)
    assert report["simulation"] is True
