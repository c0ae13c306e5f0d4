"""Who sees what, through the real gRPC server: a party sees its own data sets and
the jobs it takes part in (as proposer, data owner or recipient); outputs go to
recipients only; a statement is sent by the party that signed it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from coordinator_testkit import (
    FakeEnclave,
    Harness,
    Party,
    SealedDataset,
    approval,
    job_terms,
    seal_dataset,
    upload_requests,
)

from protocols.wire.v1 import coordinator_pb2


@pytest.fixture
def dave() -> Party:
    return Party("dave-outsider")


@pytest.fixture
def sealed(
    coord: Harness, alice: Party, bob: Party, carol: Party, dave: Party
) -> dict[str, SealedDataset]:
    """alice, bob and carol each uploaded one data set; dave is registered, owns none."""
    coord.register(alice, bob, carol, dave)
    data = {
        "alice": seal_dataset(alice, "alice-2024"),
        "bob": seal_dataset(bob, "bob-2024"),
        "carol": seal_dataset(carol, "carol-2024"),
    }
    for d in data.values():
        coord.upload(d)
    return data


def dataset_ids(coord: Harness, party: Party) -> set[str]:
    with coord.as_party(party) as stub:
        listed = stub.ListDatasets(coordinator_pb2.ListDatasetsRequest()).datasets
    return {d.dataset_id for d in listed}


def job_ids(coord: Harness, party: Party) -> set[str]:
    with coord.as_party(party) as stub:
        return {j.job_id for j in stub.ListJobs(coordinator_pb2.ListJobsRequest()).jobs}


def refused(call: Callable[..., Any], *args: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        result = call(*args)
        if isinstance(result, Iterator):
            list(result)  # a server stream reports its status while it is read
    return err.value


# --------------------------------------------------------------------------- data sets


def test_a_party_lists_only_its_own_data_sets(
    coord: Harness,
    sealed: dict[str, SealedDataset],
    alice: Party,
    bob: Party,
    carol: Party,
    dave: Party,
) -> None:
    assert dataset_ids(coord, alice) == {"alice-2024"}
    assert dataset_ids(coord, bob) == {"bob-2024"}
    assert dataset_ids(coord, carol) == {"carol-2024"}
    assert dataset_ids(coord, dave) == set()


def test_a_party_also_lists_the_data_sets_of_its_jobs(
    coord: Harness,
    sealed: dict[str, SealedDataset],
    alice: Party,
    bob: Party,
    carol: Party,
    dave: Party,
) -> None:
    # dave proposes over alice's and bob's data, with carol as the only recipient.
    terms = job_terms(dave, "job-1", [sealed["alice"], sealed["bob"]], recipients=[carol])
    coord.propose(terms)
    assert dataset_ids(coord, alice) == {"alice-2024", "bob-2024"}
    assert dataset_ids(coord, bob) == {"alice-2024", "bob-2024"}
    assert dataset_ids(coord, dave) == {"alice-2024", "bob-2024"}  # the proposer
    assert dataset_ids(coord, carol) == {"alice-2024", "bob-2024", "carol-2024"}  # a recipient


def test_get_dataset_by_id_for_any_registered_party(
    coord: Harness, sealed: dict[str, SealedDataset], alice: Party, dave: Party
) -> None:
    with coord.as_party(dave) as stub:
        dataset = stub.GetDataset(coordinator_pb2.GetDatasetRequest(dataset_id="alice-2024"))
        assert dataset.dataset_id == "alice-2024"
        assert dataset.owner_key == alice.hex
        assert dataset.manifest == sealed["alice"].manifest_bytes
        assert dataset.manifest_digest == sealed["alice"].manifest.digest
        err = refused(stub.GetDataset, coordinator_pb2.GetDatasetRequest(dataset_id="nope-2024"))
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert "nope-2024" in err.details()
    assert "detente party upload" in err.details()


# --------------------------------------------------------------------------- jobs


def test_jobs_are_hidden_from_parties_that_take_no_part(
    coord: Harness,
    sealed: dict[str, SealedDataset],
    alice: Party,
    bob: Party,
    carol: Party,
) -> None:
    coord.propose(job_terms(alice, "job-1", [sealed["alice"], sealed["bob"]]))
    with coord.as_party(carol):
        err = refused(coord.job, "job-1")
        assert err.code() is grpc.StatusCode.NOT_FOUND
        assert "job-1" in err.details()
        # Exactly what a job that does not exist looks like.
        assert refused(coord.job, "no-such-job").code() is grpc.StatusCode.NOT_FOUND
    assert job_ids(coord, carol) == set()
    for party in (alice, bob):  # the proposer and a data owner
        with coord.as_party(party):
            assert coord.job("job-1").job_id == "job-1"
        assert job_ids(coord, party) == {"job-1"}


def test_a_recipient_that_owns_no_data_sees_the_job(
    coord: Harness,
    sealed: dict[str, SealedDataset],
    alice: Party,
    carol: Party,
    dave: Party,
) -> None:
    coord.propose(job_terms(alice, "for-dave", [sealed["alice"]], recipients=[alice, dave]))
    coord.propose(job_terms(alice, "not-for-dave", [sealed["alice"]]))
    with coord.as_party(dave):
        job = coord.job("for-dave")
        assert job.proposer == alice.hex
        assert list(job.required_approvers) == [alice.hex]
        assert refused(coord.job, "not-for-dave").code() is grpc.StatusCode.NOT_FOUND
    assert job_ids(coord, dave) == {"for-dave"}
    assert job_ids(coord, carol) == set()


# --------------------------------------------------------------------------- outputs


@pytest.fixture
def finished(
    home: Path,
    fake_enclave: tuple[FakeEnclave, str],
    alice: Party,
    bob: Party,
    carol: Party,
    dave: Party,
) -> Iterator[Harness]:
    """job-1 over alice's and bob's data, outputs released to alice and carol, succeeded."""
    coord = Harness(home, enclave=fake_enclave[1])
    try:
        coord.register(alice, bob, carol, dave)
        data = [seal_dataset(alice, "alice-2024"), seal_dataset(bob, "bob-2024")]
        for d in data:
            coord.upload(d)
        terms = job_terms(alice, "job-1", data, recipients=[alice, carol])
        coord.propose(terms)
        coord.approve(alice, "job-1", terms)
        coord.approve(bob, "job-1", terms)
        coord.wait_idle()
        assert coord.job("job-1").state == "succeeded", coord.job("job-1").error
        yield coord
    finally:
        coord.stop()


def fetch(stub: Any, name: str = "model") -> Iterator[coordinator_pb2.BytesChunk]:
    return stub.FetchOutput(coordinator_pb2.FetchOutputRequest(job_id="job-1", name=name))


def test_outputs_are_served_to_recipients_only(
    finished: Harness,
    fake_enclave: tuple[FakeEnclave, str],
    alice: Party,
    bob: Party,
    carol: Party,
    dave: Party,
) -> None:
    fake, _ = fake_enclave
    for recipient in (alice, carol):  # carol is a recipient that owns no data
        with finished.as_party(recipient) as stub:
            assert b"".join(c.data for c in fetch(stub)) == fake.model
    with finished.as_party(bob) as stub:  # a data owner, not a recipient
        err = refused(fetch, stub)
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "not a recipient" in err.details()
    with finished.as_party(dave) as stub:  # takes no part: the job does not exist for him
        err = refused(fetch, stub)
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert "not a recipient" not in err.details()


def test_an_output_wrapped_to_one_recipient_is_served_to_that_one_only(
    finished: Harness, alice: Party, carol: Party
) -> None:
    """Each owner's predictions are wrapped to that owner alone; another recipient gets
    neither the key nor the ciphertext."""
    from coordinator_testkit import FAKE_ENCLAVE_KEY

    from coordinator.store import StoredOutput
    from protocols.documents import OutputRecord, ResultStatement
    from protocols.statements import Envelope

    assert finished.running is not None
    store = finished.running.store
    job = store.get_job("job-1")
    sha, size = finished.running.handler.blobs.put(b"alice's predictions, sealed")
    statement = ResultStatement(
        job_id="job-1",
        terms_digest=Envelope.from_bytes(job.terms).digest,
        mrenclave="ab" * 32,
        outputs=[OutputRecord("predictions.alice-2024", "00" * 32, {alice.hex: b"k"})],
        summary={},
    ).sign(FAKE_ENCLAVE_KEY)
    store.transition("job-1", ["succeeded"], "running", "running again (test)")
    store.finish_job(
        "job-1", [StoredOutput("predictions.alice-2024", sha, size)], statement.to_bytes()
    )
    with finished.as_party(alice) as stub:
        got = b"".join(c.data for c in fetch(stub, "predictions.alice-2024"))
    assert got == b"alice's predictions, sealed"
    with finished.as_party(carol) as stub:  # a recipient of the job, not of this output
        err = refused(fetch, stub, "predictions.alice-2024")
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "not released to you" in err.details()


# --------------------------------------------------------------------------- statements


def test_a_data_set_is_uploaded_by_its_owner_only(
    coord: Harness, home: Path, alice: Party, bob: Party
) -> None:
    coord.register(alice, bob)
    sealed = seal_dataset(alice, "alice-2024")  # signed by alice, its owner
    with coord.sent_by(bob) as stub:
        err = refused(stub.UploadDataset, upload_requests(sealed.manifest_bytes, sealed.ciphertext))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "only its owner uploads it" in err.details()
    assert dataset_ids(coord, alice) == set()
    assert [p for p in (home / "blobs").rglob("*") if p.is_file()] == []
    assert coord.upload(sealed).owner_key == alice.hex  # the owner still can


def test_terms_are_proposed_by_their_signer_only(
    coord: Harness, sealed: dict[str, SealedDataset], alice: Party, carol: Party
) -> None:
    terms = job_terms(carol, "job-1", [sealed["alice"]])  # carol's own, valid terms
    with coord.sent_by(alice):
        err = refused(coord.propose, terms)
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "signed them" in err.details()
    assert job_ids(coord, alice) == set() and job_ids(coord, carol) == set()
    assert coord.propose(terms).proposer == carol.hex


def test_an_approval_is_sent_by_its_signer_only(
    coord: Harness, sealed: dict[str, SealedDataset], alice: Party, bob: Party
) -> None:
    terms = job_terms(alice, "job-1", [sealed["alice"], sealed["bob"]])
    coord.propose(terms)
    request = coordinator_pb2.ApproveJobRequest(
        job_id="job-1", approval=approval(bob, "job-1", terms)
    )
    with coord.sent_by(alice) as stub:  # alice relays bob's genuine approval
        err = refused(stub.ApproveJob, request)
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "signed it" in err.details()
    with coord.as_party(alice):
        assert list(coord.job("job-1").approvals) == []
    with coord.sent_by(bob) as stub:
        assert len(stub.ApproveJob(request).approvals) == 1
