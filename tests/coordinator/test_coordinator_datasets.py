"""Dataset upload: the ciphertext must be exactly what the owner signed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest
from coordinator_testkit import BOTH_DATABASES, Harness, Party, seal_dataset, upload_requests

from protocols.wire.v1 import coordinator_pb2

# On SQLite and on a real PostgreSQL (a throwaway server, conftest.postgres).
pytestmark = pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)


def blob_files(home: Path) -> list[Path]:
    return [p for p in (home / "blobs").rglob("*") if p.is_file()]


def datasets(coord: Harness) -> list[coordinator_pb2.Dataset]:
    return list(coord.stub.ListDatasets(coordinator_pb2.ListDatasetsRequest()).datasets)


def test_upload_stores_ciphertext_and_manifest(coord: Harness, home: Path, alice: Party) -> None:
    coord.register(alice)
    sealed = seal_dataset(alice, "alice-2024", plaintext=b"x" * 300_000, chunk_size=1 << 16)
    dataset = coord.upload(sealed)
    sha = hashlib.sha256(sealed.ciphertext).hexdigest()
    assert dataset.dataset_id == "alice-2024"
    assert dataset.owner_key == alice.hex
    assert dataset.blob_sha256 == sha
    assert dataset.size == len(sealed.ciphertext)
    assert dataset.manifest_digest == sealed.manifest.digest
    assert dataset.manifest == sealed.manifest_bytes
    assert (home / "blobs" / sha[:2] / sha[2:]).read_bytes() == sealed.ciphertext
    assert [d.dataset_id for d in datasets(coord)] == ["alice-2024"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend"])
def test_ciphertext_not_matching_manifest_stores_nothing(
    coord: Harness, home: Path, alice: Party, damage: str
) -> None:
    coord.register(alice)
    sealed = seal_dataset(alice, "alice-2024")
    data = bytearray(sealed.ciphertext)
    if damage == "flip":
        data[len(data) // 2] ^= 1
    elif damage == "truncate":
        del data[-1]
    else:
        data += b"\x00"
    with pytest.raises(grpc.RpcError) as err:
        coord.stub.UploadDataset(upload_requests(sealed.manifest_bytes, bytes(data), piece=7))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "ciphertext does not match the signed manifest" in err.value.details()
    assert datasets(coord) == []
    assert blob_files(home) == []
    # The genuine upload still works afterwards.
    assert coord.upload(sealed).dataset_id == "alice-2024"


def test_manifest_signed_by_another_key_is_refused(
    coord: Harness, home: Path, alice: Party, bob: Party
) -> None:
    coord.register(alice, bob)
    sealed = seal_dataset(alice, "alice-2024", signer=bob.key)
    with pytest.raises(grpc.RpcError) as err:
        coord.upload(sealed)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not signed by its owner" in err.value.details()
    assert datasets(coord) == [] and blob_files(home) == []


def test_unregistered_owner_is_refused(
    coord: Harness, home: Path, alice: Party, bob: Party
) -> None:
    coord.register(bob)  # the owner (who signs the upload) is not registered
    sealed = seal_dataset(alice, "alice-2024")
    with pytest.raises(grpc.RpcError) as err:
        coord.upload(sealed)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "not a registered party" in err.value.details()
    assert datasets(coord) == [] and blob_files(home) == []


def test_dataset_id_is_unique(coord: Harness, alice: Party, bob: Party) -> None:
    coord.register(alice, bob)
    coord.upload(seal_dataset(alice, "shared-id"))
    with pytest.raises(grpc.RpcError) as err:
        coord.upload(seal_dataset(bob, "shared-id"))
    assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert [d.owner_key for d in datasets(coord)] == [alice.hex]


def test_upload_must_start_with_manifest(coord: Harness, alice: Party) -> None:
    coord.register(alice)
    sealed = seal_dataset(alice, "alice-2024")
    requests = [coordinator_pb2.UploadDatasetRequest(ciphertext=sealed.ciphertext)]
    with pytest.raises(grpc.RpcError) as err:
        coord.stub.UploadDataset(iter(requests))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    requests = [
        coordinator_pb2.UploadDatasetRequest(manifest=sealed.manifest_bytes),
        coordinator_pb2.UploadDatasetRequest(manifest=sealed.manifest_bytes),
    ]
    with pytest.raises(grpc.RpcError) as err:
        coord.stub.UploadDataset(iter(requests))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert datasets(coord) == []


def test_canary_never_reaches_coordinator_state(coord: Harness, home: Path, alice: Party) -> None:
    """What the tests prove (1) in docs/architecture.md, coordinator side: plaintext never
    lands in its db, blobs or log."""
    canary = b"CANARY-7f3a9c-DO-NOT-LEAK"
    coord.register(alice)
    coord.upload(seal_dataset(alice, "alice-2024", plaintext=b"id,secret\n1," + canary + b"\n"))
    coord.stop()
    for path in home.rglob("*"):
        if path.is_file():
            assert canary not in path.read_bytes(), path
