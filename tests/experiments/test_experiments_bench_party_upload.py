"""The upload benchmark runs a real `detente party upload` and reports its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_bench_party_upload_reports_time_and_peak_memory(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *[sys.executable, "-m", "experiments.bench_party_upload", "--rows", "20000"],
            *["--features", "8", "--categorical", "1", "--workdir", str(tmp_path), "--json"],
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (figures,) = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["rows"] == 20_000 and figures["code"] == "this checkout"
    assert 0 < figures["plaintext_bytes"] < figures["csv_bytes"]
    assert figures["seconds"] > 0 and figures["peak_rss_bytes"] > 0
