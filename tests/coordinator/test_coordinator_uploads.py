"""Resumable uploads at the coordinator: acknowledged bytes, never a partial data set.

A real coordinator on port 0 with signed requests, over SQLite and a real
PostgreSQL. A partial upload is not listed, not found and not usable in job
terms; only its owner resumes it; its ciphertext is checked whole at the end
(a mismatch leaves nothing); a stale one expires, file and all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from coordinator_testkit import BOTH_DATABASES, Harness, Party, job_terms, seal_dataset

from protocols.wire.v1 import coordinator_pb2 as pb

pytestmark = pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)

PIECE = 64 << 10


def begin(coord: Harness, manifest: bytes) -> pb.UploadStatus:
    return coord.stub.BeginUpload(pb.BeginUploadRequest(manifest=manifest))


def send(coord: Harness, owner: Party, upload_id: str, offset: int, data: bytes) -> pb.UploadStatus:
    def requests() -> Iterator[pb.SendUploadRequest]:
        yield pb.SendUploadRequest(start=pb.UploadStart(upload_id=upload_id, offset=offset))
        for i in range(0, len(data), PIECE):
            yield pb.SendUploadRequest(ciphertext=data[i : i + PIECE])

    with coord.as_party(owner) as stub:
        return stub.SendUpload(requests())


def partial_files(home: Path) -> list[Path]:
    return sorted((home / "blobs").glob(".partial-*"))


def listed(coord: Harness, party: Party) -> list[str]:
    with coord.as_party(party) as stub:
        return [d.dataset_id for d in stub.ListDatasets(pb.ListDatasetsRequest()).datasets]


def test_an_upload_in_two_parts_is_a_data_set_only_when_whole(
    coord: Harness, home: Path, alice: Party
) -> None:
    coord.register(alice)
    sealed = seal_dataset(alice, "two-parts", plaintext=b"y" * 600_000, chunk_size=1 << 16)
    data, half = sealed.ciphertext, len(sealed.ciphertext) // 2
    status = begin(coord, sealed.manifest_bytes)
    assert (status.received, status.size) == (0, len(data)) and not status.HasField("dataset")
    first = send(coord, alice, status.upload_id, 0, data[:half])
    assert first.received == half and not first.HasField("dataset")
    # Partial: not listed, not found, not usable in terms.
    assert listed(coord, alice) == []
    with coord.as_party(alice) as stub, pytest.raises(grpc.RpcError) as missing:
        stub.GetDataset(pb.GetDatasetRequest(dataset_id="two-parts"))
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as unproposed:
        coord.propose(job_terms(alice, "job-on-partial", [sealed]))
    assert unproposed.value.code() is grpc.StatusCode.NOT_FOUND
    # Begun again (a resume) it says how much it holds; the rest completes it.
    again = begin(coord, sealed.manifest_bytes)
    assert (again.upload_id, again.received) == (status.upload_id, half)
    done = send(coord, alice, again.upload_id, half, data[half:])
    sha = hashlib.sha256(data).hexdigest()
    assert done.dataset.blob_sha256 == sha and done.dataset.size == len(data)
    assert (home / "blobs" / sha[:2] / sha[2:]).read_bytes() == data
    assert listed(coord, alice) == ["two-parts"] and partial_files(home) == []
    # A reply lost after completion: beginning again returns the data set.
    assert begin(coord, sealed.manifest_bytes).dataset.blob_sha256 == sha
    events = [e.event for e in coord.running.store.audit_entries()]  # type: ignore[union-attr]
    assert events.count("dataset.uploaded") == 1


def test_only_the_owner_resumes_and_only_from_what_it_holds(
    coord: Harness, alice: Party, bob: Party
) -> None:
    coord.register(alice, bob)
    sealed = seal_dataset(alice, "alice-only", plaintext=b"z" * 200_000, chunk_size=1 << 14)
    status = begin(coord, sealed.manifest_bytes)
    send(coord, alice, status.upload_id, 0, sealed.ciphertext[:50_000])
    with pytest.raises(grpc.RpcError) as other:
        send(coord, bob, status.upload_id, 50_000, sealed.ciphertext[50_000:])
    assert other.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "only the owner" in other.value.details()
    # Bob cannot take the id with a manifest of his own either.
    bobs = seal_dataset(bob, "alice-only")
    with pytest.raises(grpc.RpcError) as taken:
        begin(coord, bobs.manifest_bytes)
    assert taken.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as ahead:
        send(coord, alice, status.upload_id, 60_000, sealed.ciphertext[60_000:])
    assert ahead.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "holds 50000 bytes" in ahead.value.details()
    # Resending bytes it already holds is harmless.
    done = send(coord, alice, status.upload_id, 40_000, sealed.ciphertext[40_000:])
    assert done.dataset.size == len(sealed.ciphertext)


@pytest.mark.parametrize("damage", ["flip", "extend"])
def test_bytes_that_do_not_match_fail_at_the_end_and_leave_nothing(
    coord: Harness, home: Path, alice: Party, damage: str
) -> None:
    coord.register(alice)
    sealed = seal_dataset(alice, "tampered", plaintext=b"w" * 300_000, chunk_size=1 << 16)
    data = bytearray(sealed.ciphertext)
    status = begin(coord, sealed.manifest_bytes)
    send(coord, alice, status.upload_id, 0, bytes(data[:100_000]))
    if damage == "flip":
        data[-10] ^= 1
    else:
        data += b"\x00"
    with pytest.raises(grpc.RpcError) as refused:
        send(coord, alice, status.upload_id, 100_000, bytes(data[100_000:]))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "nothing was stored" in refused.value.details()
    assert listed(coord, alice) == [] and partial_files(home) == []
    assert [p for p in (home / "blobs").rglob("*") if p.is_file()] == []
    # Nothing half-written: the upload starts again from zero.
    assert begin(coord, sealed.manifest_bytes).received == 0


def test_a_new_manifest_from_the_owner_replaces_its_unfinished_upload(
    coord: Harness, home: Path, alice: Party
) -> None:
    coord.register(alice)
    old = seal_dataset(alice, "resealed", plaintext=b"a" * 100_000)
    first = begin(coord, old.manifest_bytes)
    send(coord, alice, first.upload_id, 0, old.ciphertext[:30_000])
    new = seal_dataset(alice, "resealed", plaintext=b"a" * 100_000)  # sealed afresh
    second = begin(coord, new.manifest_bytes)
    assert second.upload_id != first.upload_id and second.received == 0
    assert len(partial_files(home)) == 0  # the old file went with the old upload
    with pytest.raises(grpc.RpcError) as gone:
        send(coord, alice, first.upload_id, 30_000, old.ciphertext[30_000:])
    assert gone.value.code() is grpc.StatusCode.NOT_FOUND
    assert send(coord, alice, second.upload_id, 0, new.ciphertext).HasField("dataset")


def test_a_stale_partial_upload_expires_with_its_file(
    coord: Harness, home: Path, alice: Party
) -> None:
    coord.register(alice)
    sealed = seal_dataset(alice, "stale", plaintext=b"s" * 100_000)
    status = begin(coord, sealed.manifest_bytes)
    send(coord, alice, status.upload_id, 0, sealed.ciphertext[:20_000])
    assert len(partial_files(home)) == 1 and status.expires_at > status.size
    uploads = coord.running.handler.uploads  # type: ignore[union-attr]
    assert uploads.expire(now=status.expires_at - 1000) == 0
    assert uploads.expire(now=status.expires_at + 1000) == 1
    assert partial_files(home) == [] and uploads.store.list_partials() == []
    with pytest.raises(grpc.RpcError) as gone:
        send(coord, alice, status.upload_id, 20_000, sealed.ciphertext[20_000:])
    assert gone.value.code() is grpc.StatusCode.NOT_FOUND


def test_a_restart_keeps_acknowledged_bytes_and_drops_orphan_files(
    coord: Harness, home: Path, alice: Party
) -> None:
    coord.register(alice)
    sealed = seal_dataset(alice, "restarted", plaintext=b"r" * 400_000, chunk_size=1 << 16)
    status = begin(coord, sealed.manifest_bytes)
    send(coord, alice, status.upload_id, 0, sealed.ciphertext[:150_000])
    orphan = home / "blobs" / (".partial-" + "0" * 32)
    orphan.write_bytes(b"left by a crash")
    coord.restart()
    assert not orphan.exists()
    again = begin(coord, sealed.manifest_bytes)
    assert again.received == 150_000
    done = send(coord, alice, again.upload_id, 150_000, sealed.ciphertext[150_000:])
    assert done.dataset.blob_sha256 == hashlib.sha256(sealed.ciphertext).hexdigest()
