"""Running approved jobs on a FAKE enclave (a real gRPC server with scripted answers)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from coordinator_testkit import (
    FAKE_ENCLAVE_KEY,
    FakeEnclave,
    Harness,
    Party,
    SealedDataset,
    job_terms,
    seal_dataset,
)

from coordinator.store import verify_audit_chain
from protocols.statements import Envelope
from protocols.wire.v1 import coordinator_pb2, enclave_pb2


def setup_job(
    coord: Harness, alice: Party, bob: Party, approve: bool = True
) -> list[SealedDataset]:
    coord.register(alice, bob)
    # Bob's data is > 1 MiB so it travels in several DatasetChunk messages.
    data = [
        seal_dataset(bob, "bob-2024", plaintext=b"b" * 2_500_000),
        seal_dataset(alice, "alice-2024"),
    ]
    for d in data:
        coord.upload(d)
    terms = job_terms(alice, "job-1", data)
    coord.propose(terms)
    if approve:
        coord.approve(alice, "job-1", terms)
        coord.approve(bob, "job-1", terms)
    return data


def fetch(coord: Harness, name: str) -> bytes:
    chunks = list(
        coord.stub.FetchOutput(coordinator_pb2.FetchOutputRequest(job_id="job-1", name=name))
    )
    assert all(len(c.data) <= 1 << 20 for c in chunks)
    return b"".join(c.data for c in chunks)


@pytest.fixture
def with_enclave(home: Path, fake_enclave: tuple[FakeEnclave, str]) -> Iterator[Harness]:
    harness = Harness(home, enclave=fake_enclave[1])
    yield harness
    harness.stop()


def test_approved_job_runs_and_succeeds(
    with_enclave: Harness, fake_enclave: tuple[FakeEnclave, str], alice: Party, bob: Party
) -> None:
    coord, (fake, _) = with_enclave, fake_enclave
    data = setup_job(coord, alice, bob)
    coord.wait_idle()
    job = coord.job("job-1")
    assert job.state == "succeeded", job.error
    assert Envelope.from_bytes(job.result_statement).signer == FAKE_ENCLAVE_KEY.verify_key
    assert {o.name: o.size for o in job.outputs} == {"model": len(fake.model), "metrics": 10}
    assert [e.text for e in job.events if e.kind == "state"] == [
        "proposed",
        "approved",
        "running",
        "succeeded",
    ]
    assert ("progress", "round 1/5") in [(e.kind, e.text) for e in job.events]
    # The enclave got the signed statements, manifests in terms order, then the ciphertext.
    spec = fake.specs[0]
    assert spec.terms == job.terms
    assert list(spec.approvals) == list(job.approvals)
    assert list(spec.manifests) == [d.manifest_bytes for d in data]
    assert fake.chunks[0][0] == "bob-2024"
    assert all(len(d) <= 1 << 20 for _, d in fake.chunks)
    for d in data:
        assert fake.received(d.dataset_id) == d.ciphertext
    assert fetch(coord, "model") == fake.model
    assert fetch(coord, "metrics") == b"m" * 10
    with pytest.raises(grpc.RpcError) as err:
        fetch(coord, "predictions")
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_enclave_error_fails_the_job(
    with_enclave: Harness, fake_enclave: tuple[FakeEnclave, str], alice: Party, bob: Party
) -> None:
    coord, (fake, _) = with_enclave, fake_enclave

    def refuse(_fake: FakeEnclave, context: grpc.ServicerContext) -> Iterator[object]:
        yield enclave_pb2.RunJobResponse(progress=enclave_pb2.Progress(kind="progress", text="x"))
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "measurement not allowed by the terms")

    fake.script = refuse
    setup_job(coord, alice, bob)
    coord.wait_idle()
    job = coord.job("job-1")
    assert job.state == "failed"
    assert job.error == "measurement not allowed by the terms"
    assert ("error", "measurement not allowed by the terms") in [
        (e.kind, e.text) for e in job.events
    ]
    assert list(job.outputs) == []


def test_stream_without_result_statement_fails(
    with_enclave: Harness, fake_enclave: tuple[FakeEnclave, str], alice: Party, bob: Party
) -> None:
    coord, (fake, _) = with_enclave, fake_enclave

    def silent(_fake: FakeEnclave, _context: grpc.ServicerContext) -> Iterator[object]:
        yield from ()

    fake.script = silent
    setup_job(coord, alice, bob)
    coord.wait_idle()
    job = coord.job("job-1")
    assert job.state == "failed"
    assert "without a result statement" in job.error


def test_an_unreachable_worker_gets_no_job(home: Path, alice: Party, bob: Party) -> None:
    """The only worker cannot be reached: the job waits in approved (it is not failed for
    the worker's sake), and the worker's record says why."""
    coord = Harness(home, enclave="127.0.0.1:1")
    try:
        setup_job(coord, alice, bob)
        assert not coord.running.handler.scheduler.wait_idle(2)
        assert coord.job("job-1").state == "approved"
        (worker,) = coord.running.store.list_workers()
        assert worker.health == "unreachable"
        assert "cannot reach the enclave at 127.0.0.1:1" in worker.problem
        assert worker.attested_at is None
    finally:
        coord.stop()


def test_running_job_is_rerun_after_restart(
    home: Path, fake_enclave: tuple[FakeEnclave, str], alice: Party, bob: Party
) -> None:
    fake, address = fake_enclave
    coord = Harness(home)  # no enclave: the job stays approved
    try:
        setup_job(coord, alice, bob)
        assert coord.job("job-1").state == "approved"
        coord.stop()
        # Simulate a coordinator killed while the job ran.
        with sqlite3.connect(home / "coordinator.db") as db:
            db.execute("UPDATE jobs SET state='running' WHERE job_id='job-1'")
        coord.restart(enclave=address)
        coord.wait_idle()
        job = coord.job("job-1")
        assert job.state == "succeeded", job.error
        states = [e.text for e in job.events if e.kind == "state"]
        assert states[-3:][1:] == ["running", "succeeded"]
        assert any("restarted" in s for s in states)
        assert len(fake.specs) == 1
        assert coord.running is not None
        assert verify_audit_chain(coord.running.store.audit_entries()) > 0
    finally:
        coord.stop()


def test_approved_job_is_scheduled_on_startup(
    home: Path, fake_enclave: tuple[FakeEnclave, str], alice: Party, bob: Party
) -> None:
    coord = Harness(home)
    try:
        setup_job(coord, alice, bob)
        coord.restart(enclave=fake_enclave[1])
        coord.wait_idle()
        assert coord.job("job-1").state == "succeeded"
    finally:
        coord.stop()


def test_shutdown_mid_job_leaves_it_for_the_next_start(
    home: Path, fake_enclave: tuple[FakeEnclave, str], alice: Party, bob: Party
) -> None:
    fake, address = fake_enclave
    fake.release.clear()  # the enclave holds the job until released
    coord = Harness(home, enclave=address)
    try:
        setup_job(coord, alice, bob)
        assert fake.started.wait(10)
        assert coord.job("job-1").state == "running"
        coord.stop()
        fake.release.set()
        coord.start()
        coord.wait_idle()
        job = coord.job("job-1")
        assert job.state == "succeeded", job.error
        assert len(fake.specs) == 2
    finally:
        coord.stop()
