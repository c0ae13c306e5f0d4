"""The attestation benchmark runs and reports every case (a real process, two runs each)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("dcap_qvl")


def test_bench_attestation_prints_every_case() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "experiments.bench_attestation", "--repeat", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "verification time per quote, 2 runs each (ms)"
    cases = [line for line in lines[2:] if line.strip()]
    assert len(cases) == 6
    for line in cases:
        median = float(line.split()[-3])
        assert 0 < median < 10_000, line
    assert any(line.startswith("SIMULATION SGX quote") for line in cases)
    assert any(line.startswith("real SGX quote v3 + collateral") for line in cases)
