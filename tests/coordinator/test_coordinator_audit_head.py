"""The signed audit head on every reply, ListAuditEntries, and the party's cheap check
(party_client.audit) against a real coordinator on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from coordinator_testkit import BOTH_DATABASES, Harness, Party, seal_dataset

from party_client.audit import AuditLogRewritten, memory_for, verify_extension
from party_client.remote import Coordinator
from protocols import tls
from protocols.audit_head import TRAILER, AuditHead, audit_hash, head_from_metadata
from protocols.errors import SignatureError
from protocols.wire.v1 import coordinator_pb2 as pb

pytestmark = pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)


def remote(coord: Harness, party: Party, memory: Path) -> Coordinator:
    assert coord.running is not None
    cert = tls.load_certificate(coord.running.certificate_path.read_bytes(), "cert")
    return Coordinator(
        coord.running.address, cert, party.key, audit_memory=memory_for(memory, cert)
    )


def test_every_reply_carries_the_signed_head_of_the_log(coord: Harness, alice: Party) -> None:
    assert coord.running is not None
    cert = tls.load_certificate(coord.running.certificate_path.read_bytes(), "cert")
    coord.register(alice)
    with coord.as_party(alice) as stub:
        _, call = stub.ListParties.with_call(pb.ListPartiesRequest())
    head = head_from_metadata(call.trailing_metadata())
    assert head is not None
    head.verify(cert.public_key())  # type: ignore[arg-type]
    entries = coord.running.store.audit_entries()
    assert (head.seq, head.hash) == (entries[-1].seq, entries[-1].hash)
    coord.upload(seal_dataset(alice, "alice-1"))
    with coord.as_party(alice) as stub:
        _, call = stub.ListAuditEntries.with_call(pb.ListAuditEntriesRequest(first=1))
    newer = head_from_metadata(call.trailing_metadata())
    assert newer is not None and newer.seq == head.seq + 1
    # A signature over another head does not verify.
    forged = AuditHead(newer.seq, head.hash, newer.signature)
    with pytest.raises(SignatureError):
        forged.verify(cert.public_key())  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as bad:
        with coord.as_party(alice) as stub:
            stub.ListAuditEntries(pb.ListAuditEntriesRequest(first=0))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert TRAILER not in dict(bad.value.trailing_metadata() or ())


def test_entries_chain_and_the_party_verifies_the_extension(
    coord: Harness, alice: Party, bob: Party, tmp_path: Path
) -> None:
    coord.register(alice, bob)
    with remote(coord, alice, tmp_path) as party:
        party.parties()
        entries = party.audit_entries(1)
        prev = "00" * 32
        for entry in entries:
            assert entry.prev_hash == prev and entry.computed_hash() == entry.hash
            prev = entry.hash
        memory = memory_for(tmp_path, party._certificate)
        report = verify_extension(party, memory, lambda: party.last_head)
        assert (report.verified_from, report.verified_to) == (0, len(entries))
        coord.upload(seal_dataset(bob, "bob-1"))
        party.parties()  # sees a newer head: fine
        report = verify_extension(party, memory, lambda: party.last_head)
        assert (report.verified_from, report.verified_to) == (len(entries), len(entries) + 1)
        assert report.entries_checked == 2  # the verified entry again, and the new one


def test_a_head_that_goes_back_is_refused_unless_the_log_still_holds_the_newer(
    coord: Harness, alice: Party, tmp_path: Path
) -> None:
    coord.register(alice)
    with remote(coord, alice, tmp_path) as party:
        party.parties()
        memory = memory_for(tmp_path, party._certificate)
        verified, seen = memory.load()
        assert verified is None and seen is not None
        # A reply computed before a newer one, arriving late, is confirmed by the log.
        coord.upload(seal_dataset(alice, "alice-1"))
        party.parties()
        assert party._audit is not None
        party._audit.saw(seen)
        # A head of a log that never held entry seen.seq + 1 … is a cut.
        _, newest = memory.load()
        assert newest is not None
        memory.save(None, AuditHead(newest.seq + 5, audit_hash("00" * 32, {}), b""))
        with pytest.raises(AuditLogRewritten, match="cut at the end"):
            party.parties()
