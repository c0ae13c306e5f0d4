"""The worker runs each job in a process of its own: crashes, memory, checkpoints, on real workers.

Every test starts a real enclave worker (the enclave process as `detente
libos run` starts it) and talks to it with the coordinator's RA-TLS client.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from worker_testkit import (
    Worker,
    build_worker_instance,
    collect,
    make_job,
    plaintext_model,
    released_model,
    run_job,
)

from coordinator.enclave_client import EnclaveCallError, EnclaveProgress

# Jobs the tests stop at their first "round" event (10 % of the rounds): the
# other 90 % take seconds, so the kill always lands mid-training, and nobody
# waits for them.
LONG = {"rows": 20_000, "features": 10, "rounds": 2000}
DEEP = {"tree_method": "hist", "max_depth": 6, "nthread": 1}
# A job stopped at its first round and then run to the end: 270 rounds remain,
# still far more than the test needs to kill the worker.
RESUMED = {"rows": 6000, "features": 5, "rounds": 300}


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """One worker for the module; a test that kills it starts it again."""
    w = Worker(*build_worker_instance(tmp_path_factory.mktemp("worker") / "instance")).start()
    try:
        yield w
    finally:
        w.stop()


def _enclave(worker: Worker):  # type: ignore[no-untyped-def]
    _der, verified = worker.client().verify()
    return verified.identity.hpke_key, verified.mrenclave, verified.identity.signing_key


def _until_round(messages: Iterator[object]) -> list[object]:
    seen = []
    for message in messages:
        seen.append(message)
        if isinstance(message, EnclaveProgress) and message.kind == "round":
            return seen
    raise AssertionError(f"the job ended before its first round event: {seen}")


def test_a_killed_job_process_fails_its_call_and_the_worker_runs_the_next_job(worker):
    hpke_key, mrenclave, signing_key = _enclave(worker)
    big = make_job(hpke_key, mrenclave, "job-crash", params=DEEP, **LONG)
    messages = run_job(worker, big)
    _until_round(messages)
    (child,) = worker.job_processes()
    os.kill(child, signal.SIGKILL)  # the job process dies mid-training
    with pytest.raises(EnclaveCallError) as failure:
        list(messages)
    assert failure.value.code == "ABORTED"
    assert failure.value.details.startswith(
        "the job process crashed: exit code -9 (killed by SIGKILL)"
    )
    assert worker.popen is not None and worker.popen.poll() is None  # the worker lives on

    small = make_job(hpke_key, mrenclave, "job-after", rows=400, rounds=8)
    outputs, progress = collect(run_job(worker, small))
    model = released_model(small, outputs, signing_key)
    plain, x = plaintext_model(small)
    probe = xgb.DMatrix(x, feature_names=[f"f{j}" for j in range(3)])
    assert np.array_equal(model.predict(probe), plain.predict(probe))
    (memory,) = [text for kind, text in progress if kind == "memory"]
    peak = float(re.match(r"peak ([0-9.]+) MiB", memory).group(1))  # type: ignore[union-attr]
    assert 20 < peak < 4096, memory  # the job process's own peak, not the worker's
    assert worker.job_processes() == []  # nothing left behind


def test_cancelling_the_call_stops_the_job_process(worker):
    hpke_key, mrenclave, _ = _enclave(worker)
    job = make_job(hpke_key, mrenclave, "job-cancel", params=DEEP, **LONG)
    cancel = []
    messages = worker.client().run_job(job.spec, job.datasets(), cancel.append)
    _until_round(messages)
    (child,) = worker.job_processes()
    cancel[0]()
    with pytest.raises(EnclaveCallError):
        list(messages)
    deadline = time.monotonic() + 20
    while worker.job_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.job_processes() == [], f"job process {child} outlived its cancelled call"


def test_a_job_over_the_memory_limit_fails_before_it_allocates(tmp_path):
    instance, measured = build_worker_instance(tmp_path / "small", resources={"memory_mb": 64})
    worker = Worker(instance, measured).start()
    try:
        hpke_key, mrenclave, _ = _enclave(worker)
        job = make_job(hpke_key, mrenclave, "job-big", rows=2000, rounds=3)
        with pytest.raises(EnclaveCallError) as failure:
            list(run_job(worker, job))
        details = failure.value.details
        assert failure.value.code == "FAILED_PRECONDITION"
        # Refused before any data arrived: the sealed sizes and row counts are in the manifests.
        assert "the data sets of job 'job-big' (2 data sets, " in details
        assert "MiB sealed, at most 3000 rows) and their training" in details
        assert "memory limit of 64.0 MiB ([resources] memory_mb in libos.toml)" in details
        assert re.search(r"needs [0-9.,]+ MiB", details)
        assert worker.popen is not None and worker.popen.poll() is None
        _enclave(worker)  # still answers
    finally:
        worker.stop()


def _gone(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_rerun_after_a_worker_crash_resumes_from_its_checkpoint(worker):
    hpke_key, mrenclave, signing_key = _enclave(worker)
    job = make_job(hpke_key, mrenclave, "job-resume", params=DEEP, **RESUMED)
    messages = run_job(worker, job)  # held: dropping it would cancel the call
    _until_round(messages)  # round 30: its checkpoint is written
    (child,) = worker.job_processes()
    worker.kill()  # the whole worker dies mid-job
    with pytest.raises(EnclaveCallError):
        list(messages)
    deadline = time.monotonic() + 20
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child), "the job process outlived its worker"
    worker.start()  # same instance: same sealed keys, same encrypted mount
    outputs, progress = collect(run_job(worker, job))
    (resumed,) = [text for kind, text in progress if kind == "checkpoint"]
    # Round 30 was saved before the test saw its event; the orphaned job process
    # may have saved a later one before it noticed its worker was gone.
    every = RESUMED["rounds"] // 10
    found = re.fullmatch(rf"resumed after round (\d+)/{RESUMED['rounds']}", resumed)
    assert found is not None and int(found.group(1)) % every == 0, resumed
    first_round = next(t for k, t in progress if k == "round")
    assert first_round == f"round {int(found.group(1)) + every}/{RESUMED['rounds']}"
    model = released_model(job, outputs, signing_key)
    plain, x = plaintext_model(job)
    probe = xgb.DMatrix(x, feature_names=[f"f{j}" for j in range(RESUMED["features"])])
    assert np.array_equal(model.predict(probe), plain.predict(probe))
    # The checkpoint lives in the encrypted mount: no host file names the job.
    for path in (worker.instance / "data").rglob("*"):
        assert "job-resume" not in path.name
        if path.is_file():
            assert b"job-resume" not in path.read_bytes()
