"""The scale benchmark runs end to end at a small size and prints its ratios and figures."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_bench_scale_prints_the_ratio_lines_at_a_small_size() -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "experiments.bench_scale"),
            *("--rows", "30000", "--features", "10", "--rounds", "5", "--timeout", "150"),
        ],
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    ratios = {}
    for line in lines:
        for flow in ("library", "CLI"):
            prefix = f"secure / plain ({flow}): "
            if line.startswith(prefix):
                ratios[flow] = float(line[len(prefix) :].split()[0])
    assert set(ratios) == {"library", "CLI"}, done.stdout
    assert all(ratio > 0 for ratio in ratios.values())
    assert any(line.startswith("upload throughput: ") and "raw TLS gRPC" in line for line in lines)
    assert any(line.startswith("  worker's job process: ") for line in lines), done.stdout
    assert sum(line.startswith("  party") and "(library)" in line for line in lines) == 3
    assert "model identical to plaintext: yes" in lines
