"""The pool load script runs end to end at a small size: parties, jobs over two workers,
latencies, and an audit log that verifies."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_load_pool_at_a_small_size() -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "experiments.load_pool", "--json"),
            *("--parties", "4", "--jobs", "2", "--workers", "2"),
            *("--rows", "100", "--rounds", "5", "--timeout", "300"),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["jobs_succeeded"] == 2
    assert report["audit_verify"]["ok"] and report["audit_verify"]["entries"] > 0
    latency = report["latency"]
    for operation, count in {
        "register": 4,
        "attest": 4,
        "upload": 4,
        "propose": 2,
        "approve": 4,
        "results": 4,
    }.items():
        assert latency[operation]["completed"] == count, latency
        assert latency[operation]["failed"] == 0
        assert 0 < latency[operation]["p50_ms"] <= latency[operation]["p99_ms"]
    assert latency["status"]["completed"] >= 2
    assert sum(report["spread"]["jobs_by_worker"].values()) == 2
    assert report["failures"] == {}
