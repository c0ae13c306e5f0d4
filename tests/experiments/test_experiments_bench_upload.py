"""The upload benchmark runs a real coordinator and a raw TLS gRPC sink and prints both."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_upload_measures_the_coordinator_against_raw_tls_grpc() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "experiments.bench_upload", "--mib", "8", "--repeat", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    assert figures["mebibytes"] == 8
    assert figures["coordinator_mb_s"] > 0 and figures["raw_mb_s"] > 0
    assert figures["ratio"] == figures["coordinator_mb_s"] / figures["raw_mb_s"]
    assert figures["coordinator_peak_rss_mib"] > 0
