"""libos.limits in the test process (with a budget patched in) and against real XGBoost runs.

The launcher's own install (RLIMIT_AS) is tested in a real enclave: test_libos_guard.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from libos import limits
from libos.limits import Limits, MemoryLimitError
from protocols.errors import DetenteError

MIB = 1 << 20


@pytest.fixture
def budget(monkeypatch: pytest.MonkeyPatch) -> Limits:
    installed = Limits(memory_bytes=limits.rss_bytes() + 100 * MIB, threads=2, processes=2)
    monkeypatch.setattr(limits, "_installed", installed)
    return installed


def test_check_allocation_names_the_limit_and_the_figure(budget: Limits) -> None:
    limits.check_allocation(10 * MIB, "small matrix")
    with pytest.raises(MemoryLimitError) as info:
        limits.check_allocation(500 * MIB, "training matrix of job j1 (1000 rows × 30 features)")
    error = info.value
    assert isinstance(error, DetenteError) and isinstance(error, MemoryError)
    message = str(error)
    assert message.startswith("training matrix of job j1 (1000 rows × 30 features) needs 500.0 MiB")
    assert f"memory limit of {budget.memory_bytes / MIB:,.1f} MiB" in message
    assert "[resources] memory_mb in libos.toml" in message
    assert error.limit_bytes == budget.memory_bytes
    assert error.needed_bytes >= 500 * MIB and error.what.startswith("training matrix")
    with pytest.raises(ValueError, match="non-negative"):
        limits.check_allocation(-1, "x")


def test_outside_an_enclave_only_an_address_space_limit_applies() -> None:
    import resource

    assert limits.current() is None
    if resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY:
        limits.check_allocation(1 << 50, "no budget is configured here")


def test_peak_rss_and_its_reset() -> None:
    before = limits.peak_rss_bytes()
    block = bytearray(96 * MIB)
    block[::4096] = b"x" * len(block[::4096])
    grown = limits.peak_rss_bytes()
    assert grown >= limits.rss_bytes() - MIB
    assert grown - before >= 64 * MIB or before >= grown  # an earlier peak may be higher
    del block
    if limits.reset_peak_rss():  # Linux ≥ 4.0
        assert limits.peak_rss_bytes() < limits.rss_bytes() + 32 * MIB


def test_address_space_cap_and_arenas() -> None:
    small = Limits(256 * MIB, 2, 1)
    assert limits.address_space_cap(small) > small.memory_bytes + 512 * MIB
    big = Limits(4096 * MIB, 16, 4)
    assert limits.address_space_headroom(big) > limits.address_space_headroom(small)
    assert limits.malloc_arena_max(Limits(MIB, 1, 1)) == 2
    assert limits.malloc_arena_max(big) == 16


def test_estimate_is_the_documented_formula() -> None:
    estimate = limits.estimate_xgboost_bytes(1000, 30)
    assert estimate == (
        int(1000 * 30 * 4 * limits.XGBOOST_HIST_FACTOR)
        + 30 * limits.XGBOOST_FEATURE_BYTES
        + 1000 * limits.XGBOOST_ROW_BYTES
        + limits.XGBOOST_FIXED_BYTES
    )
    assert limits.estimate_xgboost_bytes(1000, 30, bytes_per_value=8) > estimate
    assert limits.estimate_xgboost_bytes(1000, 30, outputs=5) > estimate
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            limits.estimate_xgboost_bytes(bad, 3)  # type: ignore[arg-type]
    job = limits.estimate_job_bytes(10 * MIB, 1000)
    assert limits.estimate_job_bytes(10 * MIB, 1000, vertical=True) == job + 10 * MIB
    assert job == (
        20 * MIB
        + 1000 * limits.XGBOOST_ROW_BYTES
        + limits.XGBOOST_FIXED_BYTES
        + limits.JOB_LIBRARY_BYTES
    )


# XGBoost's share of a job, as the enclave worker trains: the float32 (and text) columns
# already held as Arrow data, a QuantileDMatrix built from them in batches, then training.
TRAIN = """
import gc, json, sys
import numpy as np
import pyarrow as pa
import xgboost as xgb
from libos import limits

class Batches(xgb.DataIter):
    def __init__(self, table, labels, step):
        super().__init__(release_data=True)
        self.table, self.labels, self.step, self.start = table, labels, step, 0
    def next(self, input_data):
        if self.start >= self.table.num_rows:
            return False
        stop = self.start + self.step
        input_data(data=self.table.slice(self.start, self.step), label=self.labels[self.start:stop])
        self.start = stop
        return True
    def reset(self):
        self.start = 0

out = []
for shape in sys.argv[1:]:
    rows, features = (int(v) for v in shape.split("x"))
    rng = np.random.default_rng(0)
    columns = {f"f{j}": rng.random(rows, dtype=np.float32) for j in range(features)}
    table = pa.table(columns)
    y = (columns["f0"] > 0.5).astype(np.float32)
    del columns
    gc.collect()
    limits.reset_peak_rss()
    base = limits.rss_bytes()
    step = max(1024, (16 << 20) // (4 * features))
    booster = xgb.train(
        {"tree_method": "hist", "max_depth": 6, "nthread": 2},
        xgb.QuantileDMatrix(Batches(table, y, step), nthread=2),
        num_boost_round=5,
    )
    out.append(limits.peak_rss_bytes() - base)
    del table, y, booster
print(json.dumps(out))
"""
SHAPES = [(200_000, 20), (20_000, 100)]


def test_estimate_covers_real_xgboost_training() -> None:
    done = subprocess.run(
        [sys.executable, "-c", TRAIN, *(f"{r}x{f}" for r, f in SHAPES)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    used = json.loads(done.stdout.strip().splitlines()[-1])
    for (rows, features), peak in zip(SHAPES, used, strict=True):
        estimate = limits.estimate_xgboost_bytes(rows, features)
        assert peak <= estimate, (rows, features, peak / MIB, estimate / MIB)
        assert estimate < 4 * peak + limits.XGBOOST_FIXED_BYTES  # and not wildly above it
