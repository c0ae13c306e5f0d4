"""One worker of a pool: its status and health, several jobs at once, busy and draining refusals.

Every test starts real enclave workers (the enclave process as `detente libos
run` starts it) and calls them over RA-TLS, as the coordinator's scheduler does.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import xgboost as xgb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from worker_testkit import (
    Job,
    Worker,
    build_worker_instance,
    collect,
    make_job,
    plaintext_model,
    released_model,
    run_job,
)

from coordinator.enclave_client import EnclaveCallError, EnclaveProgress
from libos.limits import MIB, estimate_job_bytes
from protocols import grpc_status
from protocols.documents import DatasetManifest
from protocols.errors import WorkerBusy
from protocols.keys import HpkePrivateKey
from protocols.statements import Envelope
from protocols.wire.v1 import enclave_pb2, enclave_pb2_grpc

SERVICE = "detente.v1.Enclave"
LONG = {"rows": 20_000, "features": 10, "rounds": 2000}
DEEP = {"tree_method": "hist", "max_depth": 6, "nthread": 1}
BOUND = 120.0  # seconds any wait below may take at most


@pytest.fixture(scope="module")
def two_slots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker whose image allows two job processes at once ([resources] processes = 2)."""
    built = build_worker_instance(
        tmp_path_factory.mktemp("pool") / "instance", resources={"processes": 2}
    )
    w = Worker(*built).start()
    try:
        yield w
    finally:
        w.stop()


def _enclave(worker: Worker) -> tuple[Any, str, Any]:
    _der, verified = worker.client().verify()
    return verified.identity.hpke_key, verified.mrenclave, verified.identity.signing_key


def status(worker: Worker) -> Any:
    with worker.client().channel() as channel:
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        return stub.GetStatus(enclave_pb2.WorkerStatusRequest(), timeout=10)


def health(worker: Worker, service: str) -> int:
    with worker.client().channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def refusal(worker: Worker, job: Job) -> tuple[grpc.StatusCode, str, str]:
    """Run ``job`` and expect a refusal: (code, details, the detente-error trailer)."""
    sent: list[str] = []

    def requests() -> Iterator[Any]:
        spec = job.spec
        yield enclave_pb2.RunJobRequest(
            spec=enclave_pb2.JobSpec(
                terms=spec.terms, approvals=spec.approvals, manifests=spec.manifests
            )
        )
        for dataset_id, chunks in job.datasets():
            for data in chunks:
                sent.append(dataset_id)
                yield enclave_pb2.RunJobRequest(
                    chunk=enclave_pb2.DatasetChunk(dataset_id=dataset_id, data=data)
                )

    with worker.client().channel() as channel:
        call = enclave_pb2_grpc.EnclaveStub(channel).RunJob(requests(), timeout=BOUND)
        with pytest.raises(grpc.RpcError) as failure:
            list(call)
    exc: Any = failure.value
    trailer = dict(exc.trailing_metadata() or ()).get(grpc_status.ERROR_TRAILER, "")
    return exc.code(), exc.details(), trailer


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_status_and_health_of_a_started_worker(two_slots: Worker) -> None:
    reply = status(two_slots)
    assert reply.slots == 2  # [resources] processes of its image
    assert (reply.busy, list(reply.job_ids), reply.draining) == (0, [], False)
    assert reply.backend == "sim"
    assert reply.mrenclave == two_slots.measured.mrenclave
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health(two_slots, "") == serving
    assert health(two_slots, SERVICE) == serving
    with pytest.raises(grpc.RpcError) as unknown:
        health(two_slots, "detente.v1.NoSuchService")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def _same_as_plaintext(job: Job, outputs: dict[str, bytes], signing_key: Any) -> None:
    model = released_model(job, outputs, signing_key)
    plain, x = plaintext_model(job)
    probe = xgb.DMatrix(x, feature_names=[f"f{j}" for j in range(x.shape[1])])
    assert np.array_equal(model.predict(probe), plain.predict(probe))


def _until_round(messages: Iterator[object]) -> list[object]:
    seen = []
    for message in messages:
        seen.append(message)
        if isinstance(message, EnclaveProgress) and message.kind == "round":
            return seen
    raise AssertionError(f"the job ended before its first round event: {seen}")


def test_two_jobs_run_at_once_and_a_third_is_refused_as_busy(two_slots: Worker) -> None:
    hpke_key, mrenclave, signing_key = _enclave(two_slots)
    # Long enough that the first still trains once the second has started.
    size = {"rows": 20_000, "features": 10, "rounds": 600}
    first = make_job(hpke_key, mrenclave, "job-one", params=DEEP, **size)
    second = make_job(hpke_key, mrenclave, "job-two", params=DEEP, **size)
    one, two = run_job(two_slots, first), run_job(two_slots, second)
    try:
        seen_one, seen_two = _until_round(one), _until_round(two)
        # Both train now, each in its own job process.
        reply = status(two_slots)
        assert (reply.busy, sorted(reply.job_ids)) == (2, ["job-one", "job-two"])
        assert len(two_slots.job_processes()) == 2

        third = make_job(hpke_key, mrenclave, "job-three", rows=300, rounds=3)
        started = time.monotonic()
        code, details, trailer = refusal(two_slots, third)
        assert time.monotonic() - started < 10  # at once, not after the running jobs
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and trailer == WorkerBusy.__name__
        assert grpc_status.error_class(code, [(grpc_status.ERROR_TRAILER, trailer)]) is WorkerBusy
        assert "all 2 job slots of this enclave worker are busy ([resources] processes" in details

        out_one, _ = collect(iter([*seen_one, *one]))
        out_two, _ = collect(iter([*seen_two, *two]))
    finally:
        one.close()  # a stream left open would hold its channel past the test
        two.close()
    _same_as_plaintext(first, out_one, signing_key)
    _same_as_plaintext(second, out_two, signing_key)
    wait_for(lambda: status(two_slots).busy == 0, "the slots to be free")
    # The refused job runs once a slot is free.
    outputs, _ = collect(run_job(two_slots, third))
    _same_as_plaintext(third, outputs, signing_key)


def test_predict_and_status_answer_beside_running_jobs(two_slots: Worker) -> None:
    hpke_key, mrenclave, _ = _enclave(two_slots)
    jobs_ = [
        make_job(hpke_key, mrenclave, f"job-side-{n}", params=DEEP, **LONG) for n in range(2)
    ]
    cancels: list[Any] = []
    streams = [two_slots.client().run_job(j.spec, j.datasets(), cancels.append) for j in jobs_]
    for messages in streams:
        _until_round(messages)
    try:
        started = time.monotonic()
        reply = status(two_slots)
        assert time.monotonic() - started < 5
        assert reply.busy == 2
        assert two_slots.client().get_evidence(bytes(32)).backend == "sim"
    finally:
        for cancel in cancels:
            cancel()
        for messages in streams:
            messages.close()
    wait_for(lambda: status(two_slots).busy == 0, "the cancelled jobs to end")
    wait_for(lambda: two_slots.job_processes() == [], "the job processes to end")


def _estimate(job: Job) -> int:
    """The worker's memory estimate of ``job`` (enclave_worker.jobs.memory_estimate)."""
    manifests = [DatasetManifest.verify(Envelope.from_bytes(m)) for m in job.spec.manifests]
    sealed = sum(m.ciphertext_size for m in manifests)
    return estimate_job_bytes(sealed, sum(m.row_count for m in manifests))


def test_a_job_that_fits_alone_but_not_beside_a_running_one_is_refused(tmp_path: Path) -> None:
    # Sizes only: the same tables sealed to any key have the same sealed size.
    probe = make_job(HpkePrivateKey.generate().public_key, "00" * 32, "job-mem-a", **LONG)
    needed = _estimate(probe)
    # One job fits with room for its process's own memory; two do not.
    limit_mb = needed // MIB + 190
    assert 2 * needed > limit_mb * MIB
    instance, measured = build_worker_instance(
        tmp_path / "instance", resources={"memory_mb": limit_mb}
    )
    worker = Worker(instance, measured).start()
    try:
        hpke_key, mrenclave, _ = _enclave(worker)
        running = make_job(hpke_key, mrenclave, "job-mem-a", params=DEEP, **LONG)
        cancels: list[Any] = []
        messages = worker.client().run_job(running.spec, running.datasets(), cancels.append)
        _until_round(messages)
        try:
            beside = make_job(hpke_key, mrenclave, "job-mem-b", params=DEEP, **LONG)
            code, details, trailer = refusal(worker, beside)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and trailer == "WorkerBusy"
            assert f"memory limit of {limit_mb:,.1f} MiB ([resources] memory_mb" in details
            assert "1 job running now hold" in details
            assert status(worker).job_ids == ["job-mem-a"]
        finally:
            cancels[0]()
            messages.close()
    finally:
        worker.stop()


def test_sigterm_drains_not_serving_no_new_job_then_stops(tmp_path: Path) -> None:
    instance, measured = build_worker_instance(tmp_path / "instance")
    worker = Worker(instance, measured, ("--drain-seconds", "4")).start()
    try:
        hpke_key, mrenclave, _ = _enclave(worker)
        job = make_job(hpke_key, mrenclave, "job-drain", params=DEEP, **LONG)
        messages = run_job(worker, job)
        _until_round(messages)
        assert worker.popen is not None
        worker.popen.send_signal(signal.SIGTERM)
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        wait_for(lambda: health(worker, SERVICE) == not_serving, "NOT_SERVING")
        assert health(worker, "") == not_serving
        reply = status(worker)
        assert reply.draining and list(reply.job_ids) == ["job-drain"]
        late = make_job(hpke_key, mrenclave, "job-late", rows=300, rounds=3)
        code, details, trailer = refusal(worker, late)
        assert (code, trailer) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "WorkerBusy")
        assert "stopping and takes no new job" in details
        # The job that did not finish within the drain is stopped with the server.
        with pytest.raises(EnclaveCallError):
            list(messages)
        assert worker.popen.wait(timeout=BOUND) == 0
        assert worker.job_processes() == []
    finally:
        worker.stop()
