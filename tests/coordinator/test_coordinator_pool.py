"""The worker pool on FAKE enclave workers (real gRPC servers with scripted answers and
the standard health service): several jobs at once, slots, re-queue on a lost or busy
worker, bounded losses, draining, cancel and time limits across the pool, sealed models
answered by the worker that keeps them, workers added and removed at run time.

The real worker (killed by its process id mid-job) is exercised in tests/e2e/test_e2e_pool.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
from coordinator_testkit import (
    BOTH_DATABASES,
    FakeEnclave,
    Harness,
    Party,
    SealedDataset,
    fake_enclave_policy,
    job_terms,
    prediction_query,
    seal_dataset,
    sealed_terms,
    sealing_script,
    serve_fake_enclave,
)
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.enclave_client import HEALTH_SERVICE
from coordinator.store import JobRecord, verify_audit_chain
from protocols.wire.v1 import coordinator_pb2, enclave_pb2

Fakes = list[tuple[FakeEnclave, str, grpc.Server]]


@pytest.fixture
def fakes() -> Iterator[Callable[[int], Fakes]]:
    """Start ``n`` FAKE workers (stopped at the end of the test)."""
    with ExitStack() as stack:

        def start(n: int) -> Fakes:
            return [stack.enter_context(serve_fake_enclave()) for _ in range(n)]

        yield start


@pytest.fixture
def pool_of() -> Iterator[Callable[..., Harness]]:
    started: list[Harness] = []

    def make(home: Path, *addresses: str, **kw: Any) -> Harness:
        harness = Harness(home, enclaves=addresses, **kw)
        started.append(harness)
        return harness

    yield make
    for harness in started:
        harness.stop()


def shared_data(coord: Harness, alice: Party, bob: Party) -> list[SealedDataset]:
    coord.register(alice, bob)
    data = [seal_dataset(alice, "alice-2024"), seal_dataset(bob, "bob-2024")]
    for d in data:
        coord.upload(d)
    return data


def approved(
    coord: Harness, alice: Party, bob: Party, job_id: str, data: list[SealedDataset], **kw: Any
) -> None:
    terms = kw.pop("terms", None) or job_terms(alice, job_id, data, **kw)
    coord.propose(terms)
    coord.approve(alice, job_id, terms)
    coord.approve(bob, job_id, terms)


def record(coord: Harness, job_id: str) -> JobRecord:
    assert coord.running is not None
    return coord.running.store.get_job(job_id)


def wait_for(what: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def serving(coord: Harness, count: int) -> None:
    """Wait until ``count`` workers of the pool serve."""
    assert coord.running is not None
    pool = coord.running.handler.pool
    wait_for(lambda: len(pool.healthy_clients()) == count)


def audit(coord: Harness, event: str) -> list[Any]:
    assert coord.running is not None
    return [e for e in coord.running.store.audit_entries() if e.event == event]


# --------------------------------------------------------------------------- running at once


def test_two_jobs_run_at_the_same_time_on_two_workers(
    home: Path,
    fakes: Callable[[int], Fakes],
    pool_of: Callable[..., Harness],
    alice: Party,
    bob: Party,
) -> None:
    (a, addr_a, _), (b, addr_b, _) = fakes(2)
    a.release.clear()
    b.release.clear()
    coord = pool_of(home, addr_a, addr_b)
    serving(coord, 2)
    data = shared_data(coord, alice, bob)
    approved(coord, alice, bob, "job-1", data)
    approved(coord, alice, bob, "job-2", data)
    wait_for(lambda: a.started.is_set() and b.started.is_set())
    assert {record(coord, j).state for j in ("job-1", "job-2")} == {"running"}
    assert {record(coord, j).worker for j in ("job-1", "job-2")} == {addr_a, addr_b}
    a.release.set()
    b.release.set()
    coord.wait_idle(20)
    jobs = [record(coord, j) for j in ("job-1", "job-2")]
    assert [j.state for j in jobs] == ["succeeded", "succeeded"]
    # The running intervals overlap: each started before the other finished.
    spans = []
    for job in jobs:
        start = next(e.at for e in job.events if e.text == "running")
        end = next(e.at for e in job.events if e.text == "succeeded")
        spans.append((start, end))
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]
    starts = [e for e in audit(coord, "job.state") if e.detail["to"] == "running"]
    assert sorted(e.detail["worker"] for e in starts) == sorted([addr_a, addr_b])


def test_one_worker_runs_jobs_up_to_its_slots(
    home: Path,
    fakes: Callable[[int], Fakes],
    pool_of: Callable[..., Harness],
    alice: Party,
    bob: Party,
) -> None:
    ((fake, address, _),) = fakes(1)
    fake.slots = 2
    fake.release.clear()
    coord = pool_of(home, address)
    serving(coord, 1)
    data = shared_data(coord, alice, bob)
    for job_id in ("job-1", "job-2", "job-3"):
        approved(coord, alice, bob, job_id, data)
    wait_for(lambda: len(fake.running) == 2)
    time.sleep(0.6)  # three checks of the pool: the third job still waits
    assert sorted(record(coord, j).state for j in ("job-1", "job-2", "job-3")) == [
        "approved",
        "running",
        "running",
    ]
    assert len(fake.specs) == 2
    fake.release.set()
    coord.wait_idle(20)
    assert {record(coord, j).state for j in ("job-1", "job-2", "job-3")} == {"succeeded"}


def test_a_draining_worker_gets_no_new_job(
    home: Path,
    fakes: Callable[[int], Fakes],
    pool_of: Callable[..., Harness],
    alice: Party,
    bob: Party,
) -> None:
    from grpc_health.v1 import health_pb2

    (a, addr_a, _), (_, addr_b, _) = fakes(2)
    a.draining = True
    a.health.set(HEALTH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    coord = pool_of(home, addr_a, addr_b)
    serving(coord, 1)
    data = shared_data(coord, alice, bob)
    for job_id in ("job-1", "job-2"):
        approved(coord, alice, bob, job_id, data)
    coord.wait_idle(20)
    assert [record(coord, j).worker for j in ("job-1", "job-2")] == [addr_b, addr_b]
    assert a.specs == []
    assert coord.running is not None
    worker = coord.running.store.get_worker(addr_a)
    assert worker is not None and worker.health == "not serving" and worker.draining


def test_a_worker_with_another_enclave_identity_gets_no_job(
    home: Path, pool_of: Callable[..., Harness], alice: Party, bob: Party
) -> None:
    """A worker that did not join the pool (its own identity) would refuse data sealed
    to the pool's: it gets no job, and its record says to start it with --join."""
    with (
        serve_fake_enclave() as (a, addr_a, _),
        serve_fake_enclave(own_identity=True) as (
            b,
            addr_b,
            _,
        ),
    ):
        coord = pool_of(home, addr_a, addr_b)
        serving(coord, 1)
        assert coord.running is not None
        wait_for(lambda: coord.running.store.get_worker(addr_b).health == "not serving")
        worker = coord.running.store.get_worker(addr_b)
        assert worker is not None and worker.attested_at is not None
        assert f"-- --join {addr_a}` to share the pool's identity" in worker.problem
        data = shared_data(coord, alice, bob)
        for job_id in ("job-1", "job-2"):
            approved(coord, alice, bob, job_id, data)
        coord.wait_idle(20)
        assert b.specs == [] and len(a.specs) == 2


# --------------------------------------------------------------------------- re-queue


def test_a_job_whose_worker_dies_is_requeued_and_finishes_on_the_other(
    home: Path,
    fakes: Callable[[int], Fakes],
    pool_of: Callable[..., Harness],
    alice: Party,
    bob: Party,
) -> None:
    from grpc_health.v1 import health_pb2

    (a, addr_a, server_a), (b, addr_b, _) = fakes(2)
    a.release.clear()
    b.health.set(HEALTH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    coord = pool_of(home, addr_a, addr_b)
    serving(coord, 1)  # only A serves when the job starts
    data = shared_data(coord, alice, bob)
    approved(coord, alice, bob, "job-1", data)
    assert a.started.wait(10)
    b.health.set(HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    server_a.stop(0).wait()  # worker A dies mid-job
    coord.wait_idle(20)
    job = record(coord, "job-1")
    assert job.state == "succeeded", job.error
    assert job.worker == addr_b and job.attempts == 2 and job.worker_losses == 1
    assert len(b.specs) == 1
    kinds = [(e.kind, e.text) for e in job.events]
    requeued = [t for k, t in kinds if k == "requeued"]
    assert len(requeued) == 1 and requeued[0].startswith(f"re-queued: worker {addr_a} lost")
    assert [t for k, t in kinds if k == "state"] == [
        "proposed",
        "approved",
        "running",
        "approved",
        "running",
        "succeeded",
    ]
    (entry,) = audit(coord, "job.requeued")
    assert entry.subject == "job-1" and entry.detail["worker"] == addr_a
    assert entry.detail["attempt"] == 1 and entry.detail["worker_losses"] == 1
    assert "lost the call" in entry.detail["reason"]
    # One result: one succeeded transition, one set of outputs.
    assert [e.detail["to"] for e in audit(coord, "job.state")].count("succeeded") == 1
    assert sorted(o.name for o in job.outputs) == ["metrics", "model"]
    assert verify_audit_chain(coord.running.store.audit_entries()) > 0


def breaking(fake: FakeEnclave, context: grpc.ServicerContext) -> Iterator[object]:
    """The call breaks as when the worker's connection drops mid-job."""
    yield enclave_pb2.RunJobResponse(progress=enclave_pb2.Progress(kind="progress", text="x"))
    context.abort(grpc.StatusCode.UNAVAILABLE, "Socket closed")


def crashing(fake: FakeEnclave, context: grpc.ServicerContext) -> Iterator[object]:
    yield enclave_pb2.RunJobResponse(progress=enclave_pb2.Progress(kind="progress", text="x"))
    context.abort(grpc.StatusCode.ABORTED, "the job process crashed: exit code -11")


def test_a_job_process_that_crashes_in_a_living_worker_fails_the_job(
    home: Path,
    fakes: Callable[[int], Fakes],
    pool_of: Callable[..., Harness],
    alice: Party,
    bob: Party,
) -> None:
    """The worker lives and says its job process crashed: the crash may be the job's own,
    so the job fails (its proposer retries it) instead of crashing every worker in turn."""
    ((fake, address, _),) = fakes(1)
    fake.script = crashing
    coord = pool_of(home, address)
    serving(coord, 1)
    data = shared_data(coord, alice, bob)
    approved(coord, alice, bob, "job-1", data)
    coord.wait_idle(20)
    job = record(coord, "job-1")
    assert job.state == "failed" and job.error == "the job process crashed: exit code -11"
    assert job.attempts == 1 and not audit(coord, "job.requeued")


def test_a_job_that_loses_its_worker_too_often_fails_naming_retry(
    home: Path,
    fakes: Callable[[int], Fakes],
    pool_of: Callable[..., Harness],
    alice: Party,
    bob: Party,
) -> None:
    ((fake, address, _),) = fakes(1)
    fake.script = breaking
    coord = pool_of(home, address)
    serving(coord, 1)
    data = shared_data(coord, alice, bob)
    approved(coord, alice, bob, "job-1", data)
    wait_for(lambda: record(coord, "job-1").state == "failed", 30)
    job = record(coord, "job-1")
    assert job.attempts == 4 and job.worker_losses == 4  # three re-queues, then it fails
    assert "lost its worker 4 times" in job.error
    assert "detente party retry job-1" in job.error
    assert len(audit(coord, "job.requeued")) == 3
    # The proposer's retry counts the losses afresh; the worker is fixed meanwhile.
    fake.script = FakeEnclave().script
    with coord.as_party(alice) as stub:
        stub.RetryJob(coordinator_pb2.RetryJobRequest(job_id="job-1"))
    coord.wait_idle(20)
    job = record(coord, "job-1")
    assert job.state == "succeeded" and job.worker_losses == 0 and job.attempts == 5


def test_a_busy_worker_requeues_the_job_without_counting_a_loss(
    home: Path,
    fakes: Callable[[int], Fakes],
    pool_of: Callable[..., Harness],
    alice: Party,
    bob: Party,
) -> None:
    """Worker A says it has a free slot but answers WorkerBusy (another coordinator took
    the slot): the job goes back to the queue and runs on B."""
    (a, addr_a, _), (_, addr_b, _) = fakes(2)
    a.slots = 2  # A looks freer than B, so it is tried first
    a.accepts = 0
    coord = pool_of(home, addr_a, addr_b)
    serving(coord, 2)
    data = shared_data(coord, alice, bob)
    approved(coord, alice, bob, "job-1", data)
    coord.wait_idle(20)
    job = record(coord, "job-1")
    assert job.state == "succeeded" and job.worker == addr_b
    assert job.worker_losses == 0
    busy = audit(coord, "job.requeued")
    assert busy and all(e.detail["worker"] == addr_a for e in busy)
    assert "WorkerBusy" in busy[0].detail["reason"]


@pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)
def test_a_late_result_of_a_requeued_run_is_discarded(
    coord: Harness, alice: Party, bob: Party
) -> None:
    """The store records a result only for the run that holds the job: a run re-queued
    and started again elsewhere cannot add a second result."""
    data = shared_data(coord, alice, bob)
    approved(coord, alice, bob, "job-1", data)
    assert coord.running is not None
    store = coord.running.store
    assert store.start_job("job-1", "127.0.0.1:7001") == 1
    assert store.requeue_job("job-1", 1, "127.0.0.1:7001", "lost the call", True, 3) == "approved"
    assert store.start_job("job-1", "127.0.0.1:7002") == 2
    assert not store.finish_job("job-1", [], b"late", attempt=1)  # the first run, too late
    assert store.requeue_job("job-1", 1, "127.0.0.1:7001", "again", True, 3) is None
    assert not store.transition("job-1", ["running"], "failed", "failed", attempt=1)
    assert store.get_job("job-1").state == "running"
    assert store.finish_job("job-1", [], b"result", attempt=2)
    job = store.get_job("job-1")
    assert job.state == "succeeded" and job.result_statement == b"result"


# --------------------------------------------------------------------------- limits across the pool


def test_cancel_and_time_limit_hold_on_every_worker(
    home: Path,
    fakes: Callable[[int], Fakes],
    pool_of: Callable[..., Harness],
    alice: Party,
    bob: Party,
) -> None:
    (a, addr_a, _), (b, addr_b, _) = fakes(2)
    a.release.clear()
    b.release.clear()
    coord = pool_of(home, addr_a, addr_b)
    serving(coord, 2)
    data = shared_data(coord, alice, bob)
    approved(coord, alice, bob, "slow", data, max_seconds=1)
    approved(coord, alice, bob, "cancelled", data)
    wait_for(lambda: a.started.is_set() and b.started.is_set())
    with coord.as_party(alice) as stub:
        stub.CancelJob(coordinator_pb2.CancelJobRequest(job_id="cancelled", reason="changed mind"))
    coord.wait_idle(20)
    slow, cancelled = record(coord, "slow"), record(coord, "cancelled")
    assert slow.state == "failed" and "time limit of 1 s" in slow.error
    assert cancelled.state == "cancelled"
    wait_for(lambda: a.cancelled.is_set() and b.cancelled.is_set())  # both calls stopped
    assert not audit(coord, "job.requeued")


# --------------------------------------------------------------------------- sealed models


def test_a_sealed_model_is_queried_on_the_worker_that_keeps_it(
    home: Path,
    fakes: Callable[[int], Fakes],
    pool_of: Callable[..., Harness],
    alice: Party,
    bob: Party,
    carol: Party,
) -> None:
    (a, addr_a, _), (b, addr_b, server_b) = fakes(2)
    for fake in (a, b):
        fake.script = sealing_script
    a.slots = 0  # the job goes to B
    coord = pool_of(home, addr_a, addr_b)
    serving(coord, 2)
    coord.register(carol)
    data = shared_data(coord, alice, bob)
    approved(coord, alice, bob, "job-1", data, terms=sealed_terms(alice, "job-1", data, [carol]))
    coord.wait_idle(20)
    assert record(coord, "job-1").state == "succeeded"
    assert coord.running is not None
    assert coord.running.store.get_model("job-1").worker == addr_b
    query = prediction_query(carol, "job-1")
    with coord.as_party(carol) as stub:
        replies = list(stub.Predict(_predict_requests(query)))
    assert replies[-1].WhichOneof("part") == "answer"
    assert len(b.queries) == 1 and a.queries == []
    server_b.stop(0).wait()  # the worker that keeps the model goes down
    wait_for(lambda: coord.running.store.get_worker(addr_b).health == "unreachable")
    with coord.as_party(carol) as stub, pytest.raises(grpc.RpcError) as err:
        list(stub.Predict(_predict_requests(prediction_query(carol, "job-1", query_id="q2"))))
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert f"sealed in worker {addr_b}, which is unreachable" in err.value.details()
    assert a.queries == []


def _predict_requests(query: bytes) -> Iterator[enclave_pb2.PredictRequest]:
    yield enclave_pb2.PredictRequest(query=query)
    yield enclave_pb2.PredictRequest(chunk=b"r" * 100)


# --------------------------------------------------------------------------- registry


def test_workers_are_added_listed_and_removed_while_the_coordinator_runs(
    home: Path,
    fakes: Callable[[int], Fakes],
    pool_of: Callable[..., Harness],
    alice: Party,
    bob: Party,
) -> None:
    ((fake, address, _),) = fakes(1)
    coord = pool_of(home, enclave_policy=fake_enclave_policy())
    data = shared_data(coord, alice, bob)
    approved(coord, alice, bob, "job-1", data)
    assert record(coord, "job-1").state == "approved"  # no worker yet
    runner = CliRunner()
    done = runner.invoke(app, ["workers", "--home", str(home), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output) == {"workers": []}
    done = runner.invoke(app, ["workers", "add", address, "--home", str(home)])
    assert done.exit_code == 0 and "registered" in done.output, done.output
    coord.wait_idle(20)  # the running coordinator attests the new worker and runs the job
    assert record(coord, "job-1").worker == address
    done = runner.invoke(app, ["workers", "--home", str(home), "--json"])
    (worker,) = json.loads(done.output)["workers"]
    assert worker["address"] == address and worker["health"] == "serving"
    assert worker["backend"] == "SIMULATION" and worker["mrenclave"] == "ab" * 32
    assert worker["slots"] == 1 and worker["attested_at"] and worker["last_seen"]
    done = runner.invoke(app, ["workers", "--home", str(home)])
    assert "SIMULATION (no hardware protection)" in done.output and address in done.output
    done = runner.invoke(app, ["workers", "remove", address, "--home", str(home)])
    assert done.exit_code == 0, done.output
    assert coord.running is not None
    wait_for(lambda: coord.running.handler.pool.workers() == [])
    approved(coord, alice, bob, "job-2", data)
    time.sleep(0.6)
    assert record(coord, "job-2").state == "approved" and len(fake.specs) == 1
    events = [(e.event, e.subject) for e in coord.running.store.audit_entries()]
    assert ("worker.registered", address) in events and ("worker.removed", address) in events
    assert ("worker.attested", address) in events
    done = runner.invoke(app, ["workers", "remove", address, "--home", str(home)])
    assert done.exit_code != 0 and "no worker" in done.output
