"""The Parquet upload benchmark runs a real party upload and a raw gRPC stream, and reports both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from experiments.bench_upload_parquet import generate

pytestmark = pytest.mark.e2e


def test_the_generated_table_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    rows = generate(first, 1, features=4, seed=3)
    generate(second, 1, features=4, seed=3)
    assert pq.read_table(first).equals(pq.read_table(second))
    assert pq.read_metadata(first).num_rows == rows > 0


def test_bench_upload_parquet_reports_throughputs_ratio_and_memory(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "experiments.bench_upload_parquet", "--mib", "4",
         "--features", "8", "--workdir", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["rows"] > 0 and figures["ciphertext_bytes"] > 4 << 20
    assert figures["seal_seconds"] > 0 and figures["send_seconds"] > 0
    assert figures["raw_mb_s"] > 0 and figures["upload_mb_s"] > 0
    assert figures["ratio"] == pytest.approx(figures["upload_mb_s"] / figures["raw_mb_s"])
    assert figures["peak_rss_bytes"] > 50 << 20  # a Python process with pyarrow loaded
