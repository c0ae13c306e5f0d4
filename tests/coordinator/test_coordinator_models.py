"""Sealed models at the coordinator, through the real gRPC server and a FAKE enclave (a
real gRPC server with scripted answers): the record made when a job seals its model, who
sees it, the query relay (unchanged both ways, counted, refusals before the enclave, the
enclave's error class carried through) and retirement with every owner's signature.

What the real enclave decides (budgets, signatures, destruction) is tested through real
processes in tests/e2e/test_attack_sealed_coordinator.py."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from coordinator_testkit import (
    FAKE_ENCLAVE_KEY,
    MRENCLAVE,
    FakeEnclave,
    Harness,
    Party,
    default_script,
    fake_server,
    job_terms,
    prediction_query,
    refusing_script,
    retirement,
    seal_dataset,
    sealed_terms,
    sealing_script,
)

from coordinator import enclave_client
from coordinator.handler import models as model_handler
from coordinator.store import verify_audit_chain
from protocols import grpc_status
from protocols.documents import JobTerms, PredictionAnswer
from protocols.errors import (
    BudgetExhausted,
    DatasetError,
    DetenteError,
    IntegrityError,
    ModelRetired,
    NotAllowed,
)
from protocols.keys import SigningKey
from protocols.statements import Envelope
from protocols.wire.v1 import coordinator_pb2, enclave_pb2


@pytest.fixture
def dave() -> Party:
    return Party("dave-outsider")


@dataclass
class Sealed:
    """A coordinator on a FAKE enclave, with job-1 run and its model sealed.

    alice and bob own the data (alice proposed; both approved); the terms let
    alice and carol query the model; dave is registered and has no part in it.
    """

    coord: Harness
    fake: FakeEnclave
    terms: Envelope
    alice: Party
    bob: Party
    carol: Party
    dave: Party


def run_job(coord: Harness, terms: Envelope, *owners: Party) -> coordinator_pb2.Job:
    job_id = JobTerms.verify(terms).job_id
    coord.propose(terms)
    for owner in owners:
        coord.approve(owner, job_id, terms)
    coord.wait_idle()
    return coord.job(job_id)


@pytest.fixture
def with_enclave(home: Path, fake_enclave: tuple[FakeEnclave, str]) -> Iterator[Harness]:
    harness = Harness(home, enclave=fake_enclave[1])
    yield harness
    harness.stop()


@pytest.fixture
def sealed(
    with_enclave: Harness,
    fake_enclave: tuple[FakeEnclave, str],
    alice: Party,
    bob: Party,
    carol: Party,
    dave: Party,
) -> Sealed:
    coord, fake = with_enclave, fake_enclave[0]
    coord.register(alice, bob, carol, dave)
    data = [seal_dataset(alice, "alice-2024"), seal_dataset(bob, "bob-2024")]
    for d in data:
        coord.upload(d)
    terms = sealed_terms(alice, "job-1", data, queriers=[alice, carol])
    fake.script = sealing_script
    job = run_job(coord, terms, alice, bob)
    assert job.state == "succeeded", job.error
    return Sealed(coord, fake, terms, alice, bob, carol, dave)


def get_model(s: Sealed, party: Party, model_id: str = "job-1") -> coordinator_pb2.Model:
    with s.coord.as_party(party) as stub:
        return stub.GetModel(coordinator_pb2.GetModelRequest(model_id=model_id))


def list_models(s: Sealed, party: Party) -> list[str]:
    with s.coord.as_party(party) as stub:
        return [m.model_id for m in stub.ListModels(coordinator_pb2.ListModelsRequest()).models]


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def error_class(err: grpc.RpcError) -> type[DetenteError]:
    return grpc_status.error_class(err.code(), err.trailing_metadata())


def predict_requests(query: bytes, rows: bytes, piece: int = 1 << 20) -> Iterator[Any]:
    yield enclave_pb2.PredictRequest(query=query)
    for i in range(0, len(rows), piece):
        yield enclave_pb2.PredictRequest(chunk=rows[i : i + piece])


def predict(s: Sealed, party: Party, query: bytes, rows: bytes = b"r" * 100) -> tuple[bytes, bytes]:
    """Run a query as ``party``: the answer's sealed bytes and its signed envelope."""
    with s.coord.as_party(party) as stub:
        replies = list(stub.Predict(predict_requests(query, rows)))
    assert replies[-1].WhichOneof("part") == "answer"
    assert all(r.WhichOneof("part") == "chunk" for r in replies[:-1])
    return b"".join(r.chunk for r in replies[:-1]), replies[-1].answer


def retire(s: Sealed, party: Party, envelope: bytes, model_id: str = "job-1") -> Any:
    with s.coord.as_party(party) as stub:
        return stub.RetireModel(
            coordinator_pb2.CoordinatorRetireModelRequest(model_id=model_id, retirement=envelope)
        )


def audit(s: Sealed, event: str) -> list[dict[str, Any]]:
    assert s.coord.running is not None
    entries = s.coord.running.store.audit_entries()
    verify_audit_chain(entries)
    return [e.detail for e in entries if e.event == event]


# --------------------------------------------------------------------------- sealing


def test_a_sealed_job_records_its_model_and_says_so(sealed: Sealed) -> None:
    s = sealed
    job = s.coord.job("job-1")
    worker = s.coord.enclave
    assert ("model", f"model sealed in the enclave as job-1 (kept by worker {worker})") in [
        (e.kind, e.text) for e in job.events
    ]
    assert [o.name for o in job.outputs] == ["metrics"]
    model = get_model(s, s.alice)
    assert model.model_id == model.job_id == "job-1"
    assert model.state == "sealed"
    assert model.terms_digest == s.terms.digest == job.terms_digest
    assert list(model.owners) == [s.alice.hex, s.bob.hex]
    assert not model.retirements and not model.queries and model.retired_at == 0
    assert model.created_at >= job.created_at
    [detail] = audit(s, "model.sealed")
    assert detail == {
        "job_id": "job-1",
        "terms_digest": s.terms.digest,
        "owners": [s.alice.hex, s.bob.hex],
        "queriers": [s.alice.hex, s.carol.hex],
        "worker": worker,
    }
    assert s.coord.running is not None
    assert s.coord.running.store.get_model("job-1").worker == worker
    s.coord.restart()
    assert get_model(s, s.carol).state == "sealed"


@pytest.mark.parametrize(
    ("sealing", "named", "expected"),
    [
        (True, "another-model", "names sealed model 'another-model', not the id of job"),
        (True, None, "seal the model, but the enclave's result statement names no sealed model"),
        (False, "job-1", "release the model: nothing of it is recorded"),
    ],
)
def test_a_statement_that_disagrees_with_the_terms_fails_the_job(
    with_enclave: Harness,
    fake_enclave: tuple[FakeEnclave, str],
    alice: Party,
    carol: Party,
    sealing: bool,
    named: str | None,
    expected: str,
) -> None:
    coord, fake = with_enclave, fake_enclave[0]
    coord.register(alice, carol)
    data = [seal_dataset(alice, "alice-2024")]
    coord.upload(data[0])
    terms = (
        sealed_terms(alice, "job-1", data, queriers=[carol])
        if sealing
        else job_terms(alice, "job-1", data)
    )
    fake.script = sealing_script
    fake.sealed_as = named
    if sealing and named is None:
        fake.script = default_script  # releases a model output, names none
    job = run_job(coord, terms, alice)
    assert job.state == "failed"
    assert expected in job.error
    with coord.as_party(alice) as stub:
        assert not stub.ListModels(coordinator_pb2.ListModelsRequest()).models


def test_a_model_output_of_a_sealing_job_is_not_kept(
    with_enclave: Harness, fake_enclave: tuple[FakeEnclave, str], alice: Party, carol: Party
) -> None:
    """An enclave that streams the model of terms that seal it: the job fails, nobody gets it."""
    coord, fake = with_enclave, fake_enclave[0]

    def leaking(fake: FakeEnclave, context: Any) -> Iterator[enclave_pb2.RunJobResponse]:
        yield enclave_pb2.RunJobResponse(output=enclave_pb2.OutputChunk(name="model", data=b"M"))
        yield from sealing_script(fake, context)

    coord.register(alice, carol)
    data = [seal_dataset(alice, "alice-2024")]
    coord.upload(data[0])
    fake.script = leaking
    job = run_job(coord, sealed_terms(alice, "job-1", data, queriers=[carol]), alice)
    assert job.state == "failed" and not job.outputs
    assert "the enclave sent a model output for job 'job-1', whose terms seal the model" in (
        job.error
    )
    with coord.as_party(alice) as stub:
        assert not stub.ListModels(coordinator_pb2.ListModelsRequest()).models
    stored = [p.read_bytes() for p in (coord.home / "blobs").rglob("*") if p.is_file()]
    assert b"M" not in stored and data[0].ciphertext in stored


# --------------------------------------------------------------------------- visibility


def test_a_model_is_seen_by_its_owners_and_queriers_only(sealed: Sealed) -> None:
    s = sealed
    for party in (s.alice, s.bob, s.carol):
        assert list_models(s, party) == ["job-1"]
        assert get_model(s, party).model_id == "job-1"
        # A querier sees the sealing job too: its terms say the budgets and the answer.
        with s.coord.as_party(party) as stub:
            jobs = stub.ListJobs(coordinator_pb2.ListJobsRequest()).jobs
            assert [j.job_id for j in jobs] == ["job-1"]
            assert stub.GetJob(coordinator_pb2.GetJobRequest(job_id="job-1")).terms
    assert list_models(s, s.dave) == []
    with s.coord.as_party(s.dave) as stub:
        assert list(stub.ListJobs(coordinator_pb2.ListJobsRequest()).jobs) == []
    hidden = refused(lambda: get_model(s, s.dave))
    unknown = refused(lambda: get_model(s, s.alice, "no-such-model"))
    assert hidden.code() == unknown.code() == grpc.StatusCode.NOT_FOUND
    assert hidden.details() == (
        "no sealed model 'job-1' that you own or may query: list yours with `detente party models`"
    )


def test_nobody_fetches_a_sealed_model(sealed: Sealed) -> None:
    s = sealed

    def fetch(party: Party, name: str) -> bytes:
        with s.coord.as_party(party) as stub:
            request = coordinator_pb2.FetchOutputRequest(job_id="job-1", name=name)
            return b"".join(c.data for c in stub.FetchOutput(request))

    for party in (s.alice, s.bob):
        err = refused(lambda p=party: fetch(p, "model"))  # type: ignore[misc]
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "sealed its model in the enclave: it is released to no one" in err.details()
        assert "`detente party predict job-1 FILE`" in err.details()
    # carol may query the model: she sees the job (its terms say her budget and the
    # answer's shape), but receives none of its outputs.
    err = refused(lambda: fetch(s.carol, "model"))
    assert "sealed its model in the enclave: it is released to no one" in err.details()
    assert refused(lambda: fetch(s.carol, "metrics")).code() == grpc.StatusCode.PERMISSION_DENIED
    assert fetch(s.alice, "metrics") == b"m" * 10


# --------------------------------------------------------------------------- queries


def test_a_query_and_its_answer_are_relayed_unchanged_and_counted(sealed: Sealed) -> None:
    s = sealed
    rows = bytes(range(256)) * 10_000  # 2.5 MB of "sealed rows", several pieces
    query = prediction_query(s.carol, "job-1", rows=10, rows_ciphertext=rows)
    sealed_answer, envelope = predict(s, s.carol, query, rows)
    assert s.fake.queries == [query] and s.fake.query_rows == [rows]
    assert sealed_answer == s.fake.answer
    answer = PredictionAnswer.verify(Envelope.from_bytes(envelope), FAKE_ENCLAVE_KEY.verify_key)
    assert answer.query_digest == Envelope.from_bytes(query).digest
    predict(s, s.carol, prediction_query(s.carol, "job-1", rows=25, query_id="q-2"))
    predict(s, s.alice, prediction_query(s.alice, "job-1", rows=1, query_id="q-3"))
    counts = {q.querier: (q.queries, q.rows) for q in get_model(s, s.bob).queries}
    assert counts == {s.carol.hex: (2, 35), s.alice.hex: (1, 1)}
    assert audit(s, "model.query") == [
        {"querier": s.carol.hex, "rows": 10},
        {"querier": s.carol.hex, "rows": 25},
        {"querier": s.alice.hex, "rows": 1},
    ]


def test_a_query_by_anyone_but_a_querier_never_reaches_the_enclave(sealed: Sealed) -> None:
    s = sealed
    # bob owns the model but the terms do not let him query it.
    err = refused(lambda: predict(s, s.bob, prediction_query(s.bob, "job-1")))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and error_class(err) is NotAllowed
    assert "you are not a querier of model 'job-1'" in err.details()
    # dave takes no part: the model does not exist for him.
    err = refused(lambda: predict(s, s.dave, prediction_query(s.dave, "job-1")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    # bob relaying carol's signed query.
    err = refused(lambda: predict(s, s.bob, prediction_query(s.carol, "job-1")))
    assert "sent by the querier that signed it" in err.details()
    # A query whose signature does not verify.
    genuine = Envelope.from_bytes(prediction_query(s.carol, "job-1"))
    forged = Envelope(genuine.payload_type, genuine.payload, genuine.signer, b"\x00" * 64)
    err = refused(lambda: predict(s, s.carol, forged.to_bytes()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A model that does not exist, and rows before the query.
    err = refused(lambda: predict(s, s.carol, prediction_query(s.carol, "job-2")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    with s.coord.as_party(s.carol) as stub:
        err = refused(lambda: list(stub.Predict(iter([enclave_pb2.PredictRequest(chunk=b"x")]))))
    assert "must start with the signed query" in err.details()
    assert s.fake.queries == []
    assert not get_model(s, s.carol).queries and audit(s, "model.query") == []


@pytest.mark.parametrize(
    "error",
    [
        BudgetExhausted("query of 500 rows refused: carol has 400 rows in all, 100 today left"),
        ModelRetired("the model 'job-1' was retired"),
        DatasetError("the query's column 'PAY_0' is text; the model reads it as a number"),
        NotAllowed("the query's signer is not a querier of model 'job-1'"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_the_enclaves_refusal_reaches_the_querier_as_it_was(
    sealed: Sealed, error: DetenteError
) -> None:
    s = sealed
    s.fake.predict_script = refusing_script(error)
    err = refused(lambda: predict(s, s.carol, prediction_query(s.carol, "job-1")))
    assert err.code() == grpc_status.code_for(error)
    assert error_class(err) is type(error)
    assert err.details() == str(error)
    assert len(s.fake.queries) == 1
    assert not get_model(s, s.carol).queries  # a refused query is not counted


def test_the_relay_bounds_the_rows_it_streams(
    sealed: Sealed, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = sealed
    monkeypatch.setattr(model_handler, "MAX_QUERY_BYTES", 3 << 20)
    rows = b"r" * (4 << 20)
    query = prediction_query(s.carol, "job-1", rows_ciphertext=rows)
    err = refused(lambda: predict(s, s.carol, query, rows))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pass the coordinator's relay limit of 3,145,728 bytes (MAX_QUERY_BYTES)" in (
        err.details()
    )
    assert not get_model(s, s.carol).queries
    # Below the bound the same query goes through.
    rows = b"r" * (2 << 20)
    predict(s, s.carol, prediction_query(s.carol, "job-1", rows_ciphertext=rows), rows)


# --------------------------------------------------------------------------- retirement


def test_retirement_needs_every_owner_then_the_enclave_destroys_the_model(
    sealed: Sealed,
) -> None:
    s = sealed
    alice_says = retirement(s.alice, "job-1", s.terms.digest)
    model = retire(s, s.alice, alice_says)
    assert model.state == "sealed" and list(model.retirements) == [alice_says]
    # The same owner again changes nothing, and the enclave is not called yet.
    assert list(retire(s, s.alice, retirement(s.alice, "job-1", s.terms.digest)).retirements) == [
        alice_says
    ]
    assert s.fake.retirements == []
    assert [d["owner"] for d in audit(s, "model.retirement_signed")] == [s.alice.hex]
    predict(s, s.carol, prediction_query(s.carol, "job-1"))  # still answers

    bob_says = retirement(s.bob, "job-1", s.terms.digest)
    model = retire(s, s.bob, bob_says)
    assert model.state == "retired" and model.retired_at >= model.created_at
    [call] = s.fake.retirements
    assert call.model_id == "job-1" and list(call.retirements) == [alice_says, bob_says]
    assert audit(s, "model.retired") == [
        {"from": "sealed", "to": "retired", "owners": [s.alice.hex, s.bob.hex]}
    ]
    assert "model job-1 retired: the enclave destroyed it and its key" in [
        e.text for e in s.coord.job("job-1").events
    ]
    # Later queries are refused before the enclave; a late retirement changes nothing.
    err = refused(lambda: predict(s, s.carol, prediction_query(s.carol, "job-1", query_id="q-9")))
    assert error_class(err) is ModelRetired
    assert err.details() == "the model 'job-1' was retired by its owners: it answers no queries"
    assert len(s.fake.queries) == 1
    assert retire(s, s.bob, bob_says).state == "retired" and len(s.fake.retirements) == 1


def test_retirements_that_are_not_an_owners_are_refused(sealed: Sealed) -> None:
    s = sealed
    # carol may query but owns nothing; dave does not see the model.
    err = refused(lambda: retire(s, s.carol, retirement(s.carol, "job-1", s.terms.digest)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "only its owners" in err.details()
    err = refused(lambda: retire(s, s.dave, retirement(s.dave, "job-1", s.terms.digest)))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    # bob's retirement forged by carol: a signature under bob's key id that is not his.
    mallory = SigningKey.generate()
    genuine = Envelope.from_bytes(retirement(s.bob, "job-1", s.terms.digest))
    forged = Envelope(
        genuine.payload_type, genuine.payload, genuine.signer, mallory.sign(genuine.payload)
    )
    with s.coord.sent_by(s.carol):
        err = refused(lambda: retire(s, s.carol, forged.to_bytes()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "signature does not verify" in err.details()
    # bob's genuine retirement, sent by alice.
    with s.coord.sent_by(s.alice):
        err = refused(lambda: retire(s, s.alice, genuine.to_bytes()))
    assert "sent by the owner that signed it" in err.details()
    # Another terms digest, another model id.
    err = refused(lambda: retire(s, s.bob, retirement(s.bob, "job-1", "ab" * 32)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sealed by terms with digest" in err.details()
    err = refused(lambda: retire(s, s.bob, retirement(s.bob, "job-7", s.terms.digest)))
    assert "the retirement is for model 'job-7', not model 'job-1'" in err.details()
    model = get_model(s, s.bob)
    assert model.state == "sealed" and not model.retirements
    assert s.fake.retirements == [] and audit(s, "model.retirement_signed") == []


def test_an_enclave_that_fails_to_retire_keeps_the_signatures_for_a_retry(
    sealed: Sealed,
) -> None:
    s = sealed
    s.fake.retire_error = IntegrityError("the encrypted file system could not be written")
    retire(s, s.alice, retirement(s.alice, "job-1", s.terms.digest))
    err = refused(lambda: retire(s, s.bob, retirement(s.bob, "job-1", s.terms.digest)))
    assert error_class(err) is IntegrityError
    assert err.details().startswith("the encrypted file system could not be written; ")
    assert "any owner re-sends them with `detente party retire job-1`" in err.details()
    model = get_model(s, s.bob)
    assert model.state == "sealed" and len(model.retirements) == 2
    # Any owner sending again re-sends them all; the enclave now destroys the model.
    s.fake.retire_error = None
    assert retire(s, s.alice, retirement(s.alice, "job-1", s.terms.digest)).state == "retired"
    assert [len(r.retirements) for r in s.fake.retirements] == [2, 2]


def test_a_model_the_enclave_already_retired_is_recorded_retired(sealed: Sealed) -> None:
    s = sealed
    s.fake.retire_error = ModelRetired("the model 'job-1' was retired")
    retire(s, s.alice, retirement(s.alice, "job-1", s.terms.digest))
    assert retire(s, s.bob, retirement(s.bob, "job-1", s.terms.digest)).state == "retired"


def test_the_audit_log_names_no_value(sealed: Sealed) -> None:
    """What the coordinator records of queries: model, querier, rows; never the bytes."""
    s = sealed
    rows = b"CANARY-ROW-BYTES" * 1000
    predict(s, s.carol, prediction_query(s.carol, "job-1", rows_ciphertext=rows), rows)
    db = s.coord.home / "coordinator.db"
    content = b"".join(p.read_bytes() for p in db.parent.glob("coordinator.db*"))
    assert b"CANARY-ROW-BYTES" not in content
    assert hashlib.sha256(rows).hexdigest().encode() not in content


# --------------------------------------------------------------------------- the enclave channel


def serve_fake(fake: FakeEnclave, address: str, mrenclave: str = MRENCLAVE) -> grpc.Server:
    """Serve ``fake`` at ``address`` under a new RA-TLS identity (as a restarted worker)."""
    return fake_server(fake, address, mrenclave)[0]


def test_queries_share_a_verified_channel_verified_again_when_the_enclave_changes(
    home: Path, alice: Party, carol: Party, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queries reuse one pinned channel; a restarted enclave (new certificate) is verified
    before the next query; one the coordinator's policy refuses gets no query."""
    verified: list[str] = []
    peer_certificate = enclave_client.tls.peer_certificate

    def counting(address: str, timeout: float = 10.0) -> bytes:
        verified.append(address)
        return peer_certificate(address, timeout)

    monkeypatch.setattr(enclave_client.tls, "peer_certificate", counting)
    fake = FakeEnclave()
    fake.script = sealing_script
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    server = serve_fake(fake, address)
    coord = Harness(home, enclave=address)
    try:
        coord.register(alice, carol)
        data = [seal_dataset(alice, "alice-2024")]
        coord.upload(data[0])
        job = run_job(coord, sealed_terms(alice, "job-1", data, queriers=[carol]), alice)
        assert job.state == "succeeded", job.error
        s = Sealed(coord, fake, Envelope.from_bytes(job.terms), alice, alice, carol, carol)
        verified.clear()
        for i in range(3):
            predict(s, carol, prediction_query(carol, "job-1", query_id=f"q-{i}"))
        # The pool's health checks share the channel too: it may be verified already.
        assert len(verified) <= 1
        before = len(verified)

        server.stop(0).wait()  # the worker restarts: a new TLS key and certificate
        server = serve_fake(fake, address)
        deadline = time.monotonic() + 10
        while True:  # the dropped connection marks the channel for verification
            try:
                predict(s, carol, prediction_query(carol, "job-1", query_id="q-after"))
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
                assert time.monotonic() < deadline
        assert len(verified) > before and len(fake.queries) == 4

        server.stop(0).wait()  # the host swaps in an enclave of another measurement
        server = serve_fake(fake, address, mrenclave="cd" * 32)
        deadline = time.monotonic() + 10
        swapped = prediction_query(carol, "job-1", query_id="q-swapped")
        while True:
            err = refused(lambda: predict(s, carol, swapped))
            if err.code() != grpc.StatusCode.UNAVAILABLE:
                break
            assert time.monotonic() < deadline
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "does not trust the enclave" in err.details()
        assert len(fake.queries) == 4
    finally:
        coord.stop()
        server.stop(0).wait()
