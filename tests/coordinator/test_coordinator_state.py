"""Persistence across restarts, the hash-chained audit log, the blob store, evidence relay, CLI."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import grpc
import pytest
from coordinator_testkit import FakeEnclave, Harness, Party, job_terms, seal_dataset
from typer.testing import CliRunner

from coordinator.blobs import BlobStore
from coordinator.cli import app
from coordinator.server import default_db_url
from coordinator.store import SqlStore, verify_audit_chain
from protocols.cli_convention import EXIT_ERROR
from protocols.errors import IntegrityError
from protocols.statements import Envelope
from protocols.wire.v1 import coordinator_pb2


def populate(coord: Harness, alice: Party, bob: Party) -> None:
    coord.register(alice, bob)
    data = [seal_dataset(alice, "alice-2024"), seal_dataset(bob, "bob-2024")]
    for d in data:
        coord.upload(d)
    terms = job_terms(alice, "job-1", data)
    coord.propose(terms)
    coord.approve(bob, "job-1", terms)


def test_state_survives_a_restart(coord: Harness, home: Path, alice: Party, bob: Party) -> None:
    populate(coord, alice, bob)
    before = coord.job("job-1")
    coord.restart()
    parties = coord.stub.ListParties(coordinator_pb2.ListPartiesRequest()).parties
    assert {p.name for p in parties} == {"alice-bank", "bob-insurer"}
    datasets = coord.stub.ListDatasets(coordinator_pb2.ListDatasetsRequest()).datasets
    assert {d.dataset_id for d in datasets} == {"alice-2024", "bob-2024"}
    after = coord.job("job-1")
    assert after == before
    assert after.state == "proposed"
    # The job still completes after the restart.
    assert coord.approve(alice, "job-1", Envelope.from_bytes(after.terms)).state == "approved"


def test_audit_log_records_ids_and_verifies(
    coord: Harness, home: Path, alice: Party, bob: Party
) -> None:
    populate(coord, alice, bob)
    assert coord.running is not None
    store = coord.running.store
    assert verify_audit_chain(store.audit_entries()) == len(store.audit_entries())
    events = [(e.event, e.subject) for e in store.audit_entries()]
    assert events == [
        ("party.enrollment_issued", "alice-bank"),
        ("party.registered", alice.hex),
        ("party.enrollment_issued", "bob-insurer"),
        ("party.registered", bob.hex),
        ("dataset.uploaded", "alice-2024"),
        ("dataset.uploaded", "bob-2024"),
        ("job.proposed", "job-1"),
        ("approval.recorded", "job-1"),
    ]
    uploaded = store.audit_entries()[4].detail
    assert set(uploaded) == {"owner_key", "manifest_digest", "blob_sha256", "size"}


@pytest.mark.parametrize("tamper", ["detail", "delete-middle", "rehash-without-chain"])
def test_tampered_audit_log_is_detected(
    coord: Harness, home: Path, alice: Party, bob: Party, tamper: str
) -> None:
    populate(coord, alice, bob)
    coord.stop()
    with sqlite3.connect(home / "coordinator.db") as db:
        if tamper == "detail":
            db.execute("UPDATE audit_log SET subject='someone-else' WHERE seq=3")
        elif tamper == "delete-middle":
            db.execute("DELETE FROM audit_log WHERE seq=2")
        else:
            # Recompute entry 3's own hash after editing it: entry 4 no longer links.
            seq, at, event, _subject, detail, prev = db.execute(
                "SELECT seq, at, event, subject, detail, prev_hash FROM audit_log WHERE seq=3"
            ).fetchone()
            body = {
                "seq": seq,
                "at": at,
                "event": event,
                "subject": "x",
                "detail": json.loads(detail),
            }
            from coordinator.store import audit_hash

            db.execute(
                "UPDATE audit_log SET subject='x', hash=? WHERE seq=3", (audit_hash(prev, body),)
            )
    store = SqlStore(default_db_url(home))
    try:
        with pytest.raises(IntegrityError, match="audit log entry"):
            verify_audit_chain(store.audit_entries())
    finally:
        store.close()
    result = CliRunner().invoke(app, ["audit", "verify", "--home", str(home)])
    assert result.exit_code == 1
    assert "BROKEN" in result.output


def test_cli_audit_verify_ok(coord: Harness, home: Path, alice: Party, bob: Party) -> None:
    populate(coord, alice, bob)
    coord.stop()
    result = CliRunner().invoke(app, ["audit", "verify", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 8 audit log entries")


def test_cli_audit_verify_without_database(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["audit", "verify", "--home", str(tmp_path / "none")])
    assert result.exit_code == EXIT_ERROR
    assert "detente coordinator serve" in result.output


def test_cli_help_lists_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert all(c in result.output for c in ("serve", "migrate", "audit"))


def test_blob_store_refuses_corrupted_blob(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    data = b"ciphertext " * 100_000
    sha, size = blobs.put_stream(iter([data[:5000], data[5000:]]))
    assert sha == hashlib.sha256(data).hexdigest() and size == len(data)
    assert blobs.exists(sha) and blobs.read(sha) == data
    assert b"".join(blobs.iter_chunks(sha, size=4096)) == data
    path = blobs.path(sha)
    corrupted = bytearray(path.read_bytes())
    corrupted[10] ^= 0xFF
    path.write_bytes(bytes(corrupted))
    with pytest.raises(IntegrityError, match="corrupted"):
        blobs.read(sha)
    # Streamed in one read: the pieces go out as they are hashed, the refusal comes
    # after the last one (the enclave and the parties check what they receive).
    received = []
    with pytest.raises(IntegrityError, match="corrupted"):
        for piece in blobs.iter_chunks(sha, size=4096):
            received.append(piece)
    assert b"".join(received) == bytes(corrupted)
    path.write_bytes(data[:-1])
    with pytest.raises(IntegrityError, match="corrupted"):
        blobs.read(sha)


def test_blob_store_refuses_mismatch_and_leaves_nothing(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    with pytest.raises(IntegrityError):
        blobs.put_stream([b"abc"], expected_sha256="00" * 32, expected_size=3)
    with pytest.raises(IntegrityError, match="longer"):
        blobs.put_stream([b"abc", b"def"], expected_size=4)
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []


def test_corrupted_output_is_not_served(
    coord: Harness, home: Path, alice: Party, bob: Party
) -> None:
    from coordinator_testkit import fake_result_statement

    from coordinator.store import StoredOutput

    populate(coord, alice, bob)
    assert coord.running is not None
    running = coord.running
    sha, size = running.handler.blobs.put(b"encrypted model")
    running.store.transition("job-1", ["proposed"], "running", "running")
    statement = fake_result_statement(running.store.get_job("job-1").terms)
    running.store.finish_job("job-1", [StoredOutput("model", sha, size)], statement)
    request = coordinator_pb2.FetchOutputRequest(job_id="job-1", name="model")
    assert b"".join(c.data for c in coord.stub.FetchOutput(request)) == b"encrypted model"
    running.handler.blobs.path(sha).write_bytes(b"encrypted modeL")
    with pytest.raises(grpc.RpcError) as err:
        list(coord.stub.FetchOutput(request))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "corrupted" in err.value.details()


def test_evidence_needs_a_32_byte_nonce_and_an_enclave(coord: Harness, alice: Party) -> None:
    coord.register(alice)  # every request is signed by a registered party
    with pytest.raises(grpc.RpcError) as err:
        coord.stub.GetEvidence(coordinator_pb2.GetEvidenceRequest(nonce=b"short"))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        coord.stub.GetEvidence(coordinator_pb2.GetEvidenceRequest(nonce=b"n" * 32))
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "--enclave" in err.value.details()


def test_evidence_is_relayed_unchanged(home: Path, fake_enclave: tuple[FakeEnclave, str]) -> None:
    fake, address = fake_enclave
    coord = Harness(home, enclave=address)
    try:
        coord.register(Party("relay-checker"))
        nonce = bytes(range(32))
        evidence = coord.stub.GetEvidence(coordinator_pb2.GetEvidenceRequest(nonce=nonce))
        assert fake.nonces == [nonce]
        assert evidence.identity == b"identity-" + nonce
        assert evidence.quote == b"Q" * 100
        assert evidence.backend == "sim"
    finally:
        coord.stop()


def test_port_file_and_log(tmp_path: Path, alice: Party) -> None:
    from coordinator.server import start

    port_file = tmp_path / "run" / "port"
    running = start(tmp_path / "home", port_file=port_file)
    try:
        assert int(port_file.read_text()) == running.port > 0
    finally:
        running.stop(grace=0)
    log = (tmp_path / "home" / "coordinator.log").read_text()
    assert "coordinator serving" in log
