"""Rejecting a job: a data owner's signed refusal ends a proposed job for good."""

from __future__ import annotations

import json

import grpc
import pytest
from coordinator_testkit import (
    BOTH_DATABASES,
    Harness,
    Party,
    SealedDataset,
    job_terms,
    seal_dataset,
)

from protocols.documents import Rejection
from protocols.request_auth import SERVER_TIME, server_time_from_metadata
from protocols.statements import Envelope
from protocols.wire.v1 import coordinator_pb2

# The rejection is a row change and an audit entry in one transaction: on both databases.
pytestmark = pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)

REASON = "the label leaks <b>future</b> defaults; use 2023 only"


@pytest.fixture
def sealed(coord: Harness, alice: Party, bob: Party, carol: Party) -> list[SealedDataset]:
    """alice and bob each uploaded one data set; carol is registered, owns none."""
    coord.register(alice, bob, carol)
    data = [seal_dataset(alice, "alice-2024"), seal_dataset(bob, "bob-2024")]
    for d in data:
        coord.upload(d)
    return data


def reject(
    coord: Harness, party: Party, job_id: str, terms: Envelope, reason: str = REASON
) -> coordinator_pb2.Job:
    rejection = Rejection(job_id, terms.digest, reason).sign(party.key).to_bytes()
    return coord.stub.RejectJob(
        coordinator_pb2.RejectJobRequest(job_id=job_id, rejection=rejection)
    )


def test_owner_rejects_for_good(
    coord: Harness, sealed: list[SealedDataset], alice: Party, bob: Party, carol: Party
) -> None:
    terms = job_terms(carol, "job-1", sealed, recipients=[alice, bob])
    coord.propose(terms)
    coord.approve(alice, "job-1", terms)
    job = reject(coord, bob, "job-1", terms)
    assert job.state == "rejected"
    signed = Envelope.from_bytes(job.rejection)
    assert signed.signer.hex == bob.hex
    assert Rejection.verify(signed).reason == REASON
    # The proposer sees it; nothing moves the job again.
    with coord.as_party(carol):
        assert coord.job("job-1").rejection == job.rejection
        with pytest.raises(grpc.RpcError) as err:
            coord.stub.CancelJob(coordinator_pb2.CancelJobRequest(job_id="job-1"))
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as err:
            coord.stub.RetryJob(coordinator_pb2.RetryJobRequest(job_id="job-1"))
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        coord.approve(bob, "job-1", terms)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        reject(coord, alice, "job-1", terms)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert coord.job("job-1").state == "rejected"
    # The audit log names who rejected and the envelope's digest, never the reason.
    assert coord.running is not None
    entries = [e for e in coord.running.store.audit_entries() if e.event == "job.rejected"]
    assert len(entries) == 1
    detail = entries[0].detail
    assert detail["by"] == bob.hex and detail["rejection_sha256"] == signed.digest
    assert "future" not in json.dumps(detail)


def test_only_a_data_owner_rejects(
    coord: Harness, sealed: list[SealedDataset], alice: Party, bob: Party, carol: Party
) -> None:
    terms = job_terms(carol, "job-1", sealed, recipients=[alice, bob, carol])
    coord.propose(terms)
    # carol proposed it and receives results, but owns no data set of it.
    with pytest.raises(grpc.RpcError) as err:
        reject(coord, carol, "job-1", terms)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "only its data owners" in err.value.details()
    assert coord.job("job-1").state == "proposed"


def test_rejection_of_other_terms_or_by_another_sender_is_refused(
    coord: Harness, sealed: list[SealedDataset], alice: Party, bob: Party, carol: Party
) -> None:
    terms = job_terms(carol, "job-1", sealed, recipients=[alice, bob])
    other = job_terms(carol, "job-1", sealed, recipients=[alice, bob], num_rounds=9)
    coord.propose(terms)
    with pytest.raises(grpc.RpcError) as err:
        reject(coord, bob, "job-1", other)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "current terms" in err.value.details()
    # A rejection bob signed, sent by alice (a relay cannot spend another's refusal).
    with coord.sent_by(alice), pytest.raises(grpc.RpcError) as err:
        reject(coord, bob, "job-1", terms)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    # An approval is not a rejection, whatever it is sent as.
    from coordinator_testkit import approval

    with pytest.raises(grpc.RpcError) as err:
        coord.stub.RejectJob(
            coordinator_pb2.RejectJobRequest(
                job_id="job-1", rejection=approval(bob, "job-1", terms)
            )
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert coord.job("job-1").state == "proposed"


def test_a_job_with_every_approval_is_not_rejected(
    coord: Harness, sealed: list[SealedDataset], alice: Party, bob: Party, carol: Party
) -> None:
    terms = job_terms(carol, "job-1", sealed, recipients=[alice, bob])
    coord.propose(terms)
    coord.approve(alice, "job-1", terms)
    coord.approve(bob, "job-1", terms)
    with pytest.raises(grpc.RpcError) as err:
        reject(coord, bob, "job-1", terms)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert coord.job("job-1").state != "rejected"


def test_replies_and_refusals_carry_the_coordinator_clock(coord: Harness, alice: Party) -> None:
    import time

    coord.register(alice)
    before = int(time.time() * 1000)
    _, call = coord.stub.ListParties.with_call(coordinator_pb2.ListPartiesRequest())
    at = server_time_from_metadata(call.trailing_metadata())
    assert at is not None and before - 1000 <= at <= int(time.time() * 1000) + 1000
    # A request from an unknown key is refused before the servicer: the clock is there too.
    stranger = Party("stranger")
    with coord.sent_by(stranger), pytest.raises(grpc.RpcError) as err:
        coord.stub.ListParties(coordinator_pb2.ListPartiesRequest())
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert any(k == SERVER_TIME for k, _ in err.value.trailing_metadata())
