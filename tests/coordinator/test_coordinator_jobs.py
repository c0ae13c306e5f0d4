"""Proposing and approving jobs: the coordinator holds a job until every owner signed."""

from __future__ import annotations

import grpc
import pytest
from coordinator_testkit import Harness, Party, SealedDataset, approval, job_terms, seal_dataset

from protocols.wire.v1 import coordinator_pb2


@pytest.fixture
def sealed(coord: Harness, alice: Party, bob: Party, carol: Party) -> list[SealedDataset]:
    """alice and bob each uploaded one data set; carol is registered, owns none."""
    coord.register(alice, bob, carol)
    data = [seal_dataset(alice, "alice-2024"), seal_dataset(bob, "bob-2024")]
    for d in data:
        coord.upload(d)
    return data


def test_propose_job(
    coord: Harness, sealed: list[SealedDataset], alice: Party, bob: Party, carol: Party
) -> None:
    terms = job_terms(carol, "job-1", sealed, recipients=[alice, bob])
    job = coord.propose(terms)
    assert job.job_id == "job-1"
    assert job.state == "proposed"
    assert job.terms == terms.to_bytes()
    assert job.terms_digest == terms.digest
    assert list(job.required_approvers) == [alice.hex, bob.hex]
    assert [e.text for e in job.events if e.kind == "state"] == ["proposed"]
    listed = coord.stub.ListJobs(coordinator_pb2.ListJobsRequest()).jobs
    assert [j.job_id for j in listed] == ["job-1"]


def test_job_id_is_unique(coord: Harness, sealed: list[SealedDataset], carol: Party) -> None:
    coord.propose(job_terms(carol, "job-1", sealed))
    with pytest.raises(grpc.RpcError) as err:
        coord.propose(job_terms(carol, "job-1", sealed, num_rounds=9))
    assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS


def test_unknown_dataset_is_not_found(
    coord: Harness, sealed: list[SealedDataset], alice: Party, carol: Party
) -> None:
    ghost = seal_dataset(alice, "never-uploaded")
    with pytest.raises(grpc.RpcError) as err:
        coord.propose(job_terms(carol, "job-1", [sealed[0], ghost]))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert "never-uploaded" in err.value.details()


def test_wrong_manifest_digest_is_refused(
    coord: Harness, sealed: list[SealedDataset], carol: Party
) -> None:
    terms = job_terms(carol, "job-1", sealed, digests={"bob-2024": "ff" * 32})
    with pytest.raises(grpc.RpcError) as err:
        coord.propose(terms)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "manifest digest" in err.value.details()
    assert coord.stub.ListJobs(coordinator_pb2.ListJobsRequest()).jobs == []


def test_terms_signed_by_another_key_are_refused(
    coord: Harness, sealed: list[SealedDataset], alice: Party, carol: Party
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        coord.propose(job_terms(carol, "job-1", sealed, signer=alice.key))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "proposer" in err.value.details()


def test_unregistered_proposer_is_refused(coord: Harness, sealed: list[SealedDataset]) -> None:
    with pytest.raises(grpc.RpcError) as err:
        coord.propose(job_terms(Party("stranger"), "job-1", sealed))
    # The proposer signs the request too: an unknown key is refused at the door.
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "not a registered party" in err.value.details()


def test_approval_over_different_terms_names_the_digest(
    coord: Harness, sealed: list[SealedDataset], alice: Party, carol: Party
) -> None:
    terms = job_terms(carol, "job-1", sealed)
    coord.propose(terms)
    other = job_terms(carol, "job-1", sealed, num_rounds=50)  # same id, other terms
    with pytest.raises(grpc.RpcError) as err:
        coord.approve(alice, "job-1", other)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "terms digest" in err.value.details()
    assert other.digest[:16] in err.value.details()
    assert coord.job("job-1").approvals == []


def test_approval_for_another_job_id_is_refused(
    coord: Harness, sealed: list[SealedDataset], alice: Party, carol: Party
) -> None:
    terms = job_terms(carol, "job-1", sealed)
    coord.propose(terms)
    request = coordinator_pb2.ApproveJobRequest(
        job_id="job-1", approval=approval(alice, "job-2", terms)
    )
    with pytest.raises(grpc.RpcError) as err:
        coord.stub.ApproveJob(request)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_non_owner_cannot_approve(
    coord: Harness, sealed: list[SealedDataset], carol: Party
) -> None:
    terms = job_terms(carol, "job-1", sealed)
    coord.propose(terms)
    with pytest.raises(grpc.RpcError) as err:
        coord.approve(carol, "job-1", terms)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert coord.job("job-1").state == "proposed"


def test_forged_approval_is_refused(
    coord: Harness, sealed: list[SealedDataset], alice: Party, carol: Party
) -> None:
    from protocols.statements import Envelope

    terms = job_terms(carol, "job-1", sealed)
    coord.propose(terms)
    genuine = Envelope.from_bytes(approval(alice, "job-1", terms))
    forged = Envelope(genuine.payload_type, genuine.payload, genuine.signer, b"\x00" * 64)
    with pytest.raises(grpc.RpcError) as err:
        coord.stub.ApproveJob(
            coordinator_pb2.ApproveJobRequest(job_id="job-1", approval=forged.to_bytes())
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_job(coord: Harness, alice: Party, sealed: list[SealedDataset]) -> None:
    with pytest.raises(grpc.RpcError) as err:
        coord.job("nope")
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        coord.approve(alice, "nope", job_terms(alice, "nope", sealed))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_job_waits_for_every_owner_then_is_approved(
    coord: Harness, sealed: list[SealedDataset], alice: Party, bob: Party, carol: Party
) -> None:
    terms = job_terms(carol, "job-1", sealed)
    coord.propose(terms)
    job = coord.approve(alice, "job-1", terms)
    assert job.state == "proposed"
    assert len(job.approvals) == 1
    # Approving twice is harmless and does not complete the job.
    assert coord.approve(alice, "job-1", terms).state == "proposed"
    job = coord.approve(bob, "job-1", terms)
    assert job.state == "approved"
    assert len(job.approvals) == 2
    assert [e.text for e in job.events if e.kind == "state"] == ["proposed", "approved"]
    # No worker in the pool: the job waits in `approved` for one.
    assert coord.running is not None
    assert not coord.running.handler.scheduler.wait_idle(1)
    assert coord.job("job-1").state == "approved"


def test_single_owner_job(coord: Harness, sealed: list[SealedDataset], alice: Party) -> None:
    terms = job_terms(alice, "solo", sealed[:1])
    assert list(coord.propose(terms).required_approvers) == [alice.hex]
    assert coord.approve(alice, "solo", terms).state == "approved"
