"""Withdrawing a data set at the coordinator (protocols/SPEC.md §3.11), on SQLite and PostgreSQL.

A real coordinator in this process with a FAKE enclave (the real worker's side
is tests/enclave_worker/test_worker_withdrawal.py, the whole flow through real
processes tests/e2e/test_e2e_withdrawal.py): the blob is deleted, the metadata
stays marked withdrawn, waiting and running jobs are cancelled naming the
withdrawal, the audit log records it, new proposals and retries are refused,
and every worker is told until it acknowledged.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from coordinator_testkit import (
    BOTH_DATABASES,
    FakeEnclave,
    Harness,
    Party,
    SealedDataset,
    job_terms,
    seal_dataset,
    serve_fake_enclave,
)

from coordinator.dashboard.views import Views
from coordinator.store import verify_audit_chain
from protocols import statements
from protocols.documents import DatasetWithdrawal
from protocols.errors import EnclaveUnavailable
from protocols.statements import Envelope
from protocols.wire.v1 import coordinator_pb2

pytestmark = pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)


@pytest.fixture
def coord(
    home: Path, db_url: str | None, fake_enclave: tuple[FakeEnclave, str]
) -> Iterator[Harness]:
    harness = Harness(home, enclave=fake_enclave[1], db_url=db_url)
    yield harness
    harness.stop()


def statement(owner: Party, dataset: SealedDataset, signer: Party | None = None) -> bytes:
    doc = DatasetWithdrawal(
        dataset.dataset_id, dataset.manifest.digest, owner.key.verify_key, int(time.time())
    )
    if signer is None:
        return doc.sign(owner.key).to_bytes()
    # Signed by another key under the owner's name.
    envelope = Envelope.from_bytes(doc.sign(owner.key).to_bytes())
    forged = dataclasses.replace(
        envelope, signature=signer.key.sign(statements.pae(envelope.payload_type, envelope.payload))
    )
    return forged.to_bytes()


def tampered(withdrawal: bytes) -> bytes:
    """The statement with one byte of its signed payload changed."""
    envelope = Envelope.from_bytes(withdrawal)
    payload = envelope.payload.replace(b'"version":1', b'"version":2')
    assert payload != envelope.payload
    return dataclasses.replace(envelope, payload=payload).to_bytes()


def withdraw(coord: Harness, party: Party, dataset_id: str, withdrawal: bytes) -> object:
    with coord.sent_by(party) as stub:
        return stub.WithdrawDataset(
            coordinator_pb2.CoordinatorWithdrawDatasetRequest(
                dataset_id=dataset_id, withdrawal=withdrawal
            )
        )


def audit(coord: Harness, event: str) -> list[tuple[str, dict[str, object]]]:
    assert coord.running is not None
    entries = coord.running.store.audit_entries()
    verify_audit_chain(entries)
    return [(e.subject, e.detail) for e in entries if e.event == event]


def blob_path(coord: Harness, dataset: SealedDataset) -> Path:
    assert coord.running is not None
    record = coord.running.store.get_dataset(dataset.dataset_id)
    assert record is not None
    return coord.running.handler.blobs.path(record.blob_sha256)


def test_the_owner_withdraws_and_everything_that_uses_the_data_stops(
    coord: Harness, fake_enclave: tuple[FakeEnclave, str], alice: Party, bob: Party
) -> None:
    fake, _ = fake_enclave
    coord.register(alice, bob)
    a, b = seal_dataset(alice, "wd-a"), seal_dataset(bob, "wd-b")
    coord.upload(a)
    coord.upload(b)
    blob = blob_path(coord, a)
    assert blob.exists()
    waiting = job_terms(alice, "wd-waiting", [a, b])  # proposed: bob has not approved
    coord.propose(waiting)
    coord.approve(alice, "wd-waiting", waiting)
    other = job_terms(bob, "wd-other", [b])  # does not use a's data
    coord.propose(other)

    reply = withdraw(coord, alice, "wd-a", statement(alice, a))
    assert list(reply.cancelled_jobs) == ["wd-waiting"]
    assert reply.dataset.withdrawn_at > 0 and reply.dataset.withdrawal
    [delivery] = reply.deliveries
    assert delivery.worker == fake_enclave[1] and delivery.delivered_at > 0
    [sent] = fake.withdrawals
    assert sent.manifest == a.manifest_bytes and sent.withdrawal == reply.dataset.withdrawal

    assert not blob.exists(), "the ciphertext is deleted"
    with coord.as_party(alice) as stub:
        listed = stub.ListDatasets(coordinator_pb2.ListDatasetsRequest()).datasets
        shown = stub.GetDataset(coordinator_pb2.GetDatasetRequest(dataset_id="wd-a"))
    assert [d.withdrawn_at > 0 for d in listed if d.dataset_id == "wd-a"] == [True]
    assert shown.withdrawn_at == reply.dataset.withdrawn_at and shown.manifest == a.manifest_bytes
    job = coord.job("wd-waiting")
    assert job.state == "cancelled"
    assert any("'wd-a' was withdrawn by its owner" in e.text for e in job.events)
    with coord.as_party(bob):
        assert coord.job("wd-other").state == "proposed"
    assert coord.running is not None  # the operator's dashboard shows it withdrawn
    shown_on_dashboard = {
        d.dataset_id: d.withdrawn for d in Views(coord.running.store, []).datasets()
    }
    assert shown_on_dashboard == {"wd-a": True, "wd-b": False}

    [(subject, detail)] = audit(coord, "dataset.withdrawn")
    assert subject == "wd-a" and detail["manifest_digest"] == a.manifest.digest
    assert detail["owner_key"] == alice.hex
    assert [s for s, d in audit(coord, "job.state") if d.get("by") == "withdrawal"] == [
        "wd-waiting"
    ]
    assert [s for s, _ in audit(coord, "dataset.withdrawal_delivered")] == ["wd-a"]

    # New proposals naming it are refused, saying why.
    with pytest.raises(grpc.RpcError) as refused:
        coord.propose(job_terms(bob, "wd-new", [a, b]))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'wd-a' was withdrawn by its owner" in (refused.value.details() or "")
    # Approving the cancelled job is refused.
    with pytest.raises(grpc.RpcError):
        coord.approve(bob, "wd-waiting", waiting)

    # Withdrawing again changes nothing and is not sent again to a worker that acknowledged.
    again = withdraw(coord, alice, "wd-a", statement(alice, a))
    assert list(again.cancelled_jobs) == ["wd-waiting"]
    assert again.dataset.withdrawal == reply.dataset.withdrawal
    assert len(fake.withdrawals) == 1 and len(audit(coord, "dataset.withdrawn")) == 1


def test_a_running_job_on_the_data_set_is_stopped(
    coord: Harness, fake_enclave: tuple[FakeEnclave, str], alice: Party
) -> None:
    fake, _ = fake_enclave
    fake.release.clear()  # the enclave holds the job running
    coord.register(alice)
    a = seal_dataset(alice, "wd-run")
    coord.upload(a)
    terms = job_terms(alice, "wd-running", [a])
    coord.propose(terms)
    coord.approve(alice, "wd-running", terms)
    assert fake.started.wait(10)
    assert coord.job("wd-running").state == "running"
    reply = withdraw(coord, alice, "wd-run", statement(alice, a))
    assert list(reply.cancelled_jobs) == ["wd-running"]
    assert fake.cancelled.wait(10), "the scheduler stopped the enclave call"
    coord.wait_idle()
    job = coord.job("wd-running")
    assert job.state == "cancelled"
    assert "'wd-run' was withdrawn by its owner" in " ".join(e.text for e in job.events)


def test_only_the_owner_withdraws_with_its_own_valid_statement(
    coord: Harness, fake_enclave: tuple[FakeEnclave, str], alice: Party, bob: Party
) -> None:
    fake, _ = fake_enclave
    coord.register(alice, bob)
    a, b = seal_dataset(alice, "wd-own-a"), seal_dataset(bob, "wd-own-b")
    coord.upload(a)
    coord.upload(b)
    refusals = [
        # bob withdraws alice's data set with a statement of his own
        (bob, "wd-own-a", statement(bob, a), grpc.StatusCode.PERMISSION_DENIED),
        # bob relays alice's real statement
        (bob, "wd-own-a", statement(alice, a), grpc.StatusCode.PERMISSION_DENIED),
        # bob's signature under alice's name, sent as alice
        (alice, "wd-own-a", statement(alice, a, signer=bob), grpc.StatusCode.INVALID_ARGUMENT),
        # alice's statement of her data set sent for bob's
        (alice, "wd-own-b", statement(alice, a), grpc.StatusCode.PERMISSION_DENIED),
        # alice's statement naming another manifest digest
        (
            alice,
            "wd-own-a",
            DatasetWithdrawal("wd-own-a", "00" * 32, alice.key.verify_key, 1)
            .sign(alice.key)
            .to_bytes(),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        # one byte of the payload changed
        (
            alice,
            "wd-own-a",
            tampered(statement(alice, a)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for sender, dataset_id, withdrawal, code in refusals:
        with pytest.raises(grpc.RpcError) as refused:
            withdraw(coord, sender, dataset_id, withdrawal)
        assert refused.value.code() == code, (dataset_id, refused.value.details())
    assert blob_path(coord, a).exists() and blob_path(coord, b).exists()
    assert audit(coord, "dataset.withdrawn") == [] and fake.withdrawals == []
    assert coord.running is not None
    assert coord.running.store.get_dataset("wd-own-a").withdrawn_at is None  # type: ignore[union-attr]


def test_a_worker_that_missed_the_withdrawal_gets_it_when_reachable(
    coord: Harness, fake_enclave: tuple[FakeEnclave, str], alice: Party
) -> None:
    fake, address = fake_enclave
    fake.withdraw_error = EnclaveUnavailable("the worker is restarting")
    coord.register(alice)
    a = seal_dataset(alice, "wd-late")
    coord.upload(a)
    reply = withdraw(coord, alice, "wd-late", statement(alice, a))
    [missed] = reply.deliveries
    assert missed.worker == address and missed.delivered_at == 0
    assert "restarting" in missed.error and missed.attempts == 1
    assert reply.dataset.withdrawn_at > 0  # the rest is done regardless

    fake.withdraw_error = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert coord.running is not None
        if any(r.delivered_at for r in coord.running.store.deliveries("wd-late")):
            break
        time.sleep(0.2)
    [delivered] = coord.running.store.deliveries("wd-late")
    assert delivered.delivered_at and delivered.attempts >= 2
    # After a restart nothing is sent again to a worker that acknowledged, and a blob a
    # crash left behind (withdrawal committed, file not yet deleted) is deleted.
    sent = len(fake.withdrawals)
    blob = blob_path(coord, a)
    coord.stop()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(a.ciphertext)
    coord.start()
    time.sleep(0.5)
    assert len(fake.withdrawals) == sent
    assert not blob.exists()


def test_every_worker_of_the_pool_gets_it_including_one_added_later(
    home: Path, db_url: str | None, alice: Party
) -> None:
    with (
        serve_fake_enclave() as (first, first_address, _),
        serve_fake_enclave() as (down, down_address, _),
        serve_fake_enclave() as (later, later_address, _),
    ):
        down.withdraw_error = EnclaveUnavailable("the worker is restarting")
        coord = Harness(home, enclaves=(first_address, down_address), db_url=db_url)
        try:
            coord.register(alice)
            a = seal_dataset(alice, "wd-pool")
            coord.upload(a)
            reply = withdraw(coord, alice, "wd-pool", statement(alice, a))
            acknowledged = {d.worker: d.delivered_at > 0 for d in reply.deliveries}
            assert acknowledged == {first_address: True, down_address: False}
            assert len(first.withdrawals) == 1 and later.withdrawals == []

            down.withdraw_error = None
            assert coord.running is not None
            coord.running.handler.pool.register(later_address, by="the test")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                done = {
                    r.worker for r in coord.running.store.deliveries("wd-pool") if r.delivered_at
                }
                if done == {first_address, down_address, later_address}:
                    break
                time.sleep(0.2)
            assert done == {first_address, down_address, later_address}
            assert len(first.withdrawals) == 1, "an acknowledged worker is not asked again"
            assert [w.manifest for w in later.withdrawals] == [a.manifest_bytes]
        finally:
            coord.stop()
