"""Signed requests against a real coordinator: every bad case is UNAUTHENTICATED.

Requests here go over the coordinator's pinned TLS channel WITHOUT the
harness's signer, with metadata built by hand, so each test controls exactly
what is signed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from coordinator_testkit import Harness, Party, seal_dataset, upload_requests

from coordinator.auth import RequestAuthInterceptor
from protocols import request_auth, tls
from protocols.grpc_status import CHANNEL_OPTIONS
from protocols.keys import SigningKey
from protocols.request_auth import (
    KEY_ID,
    NONCE,
    SIGNATURE,
    TIMESTAMP,
    NonceCache,
    ReplayCacheFull,
    ReplayedRequest,
    UnauthenticatedRequest,
    sign_request,
    signed_message,
)
from protocols.wire.v1 import coordinator_pb2 as pb
from protocols.wire.v1 import coordinator_pb2_grpc

SERVICE = "/detente.v1.Coordinator/"


@pytest.fixture
def raw(coord: Harness) -> Iterator[Any]:
    """A stub on the pinned TLS channel that signs nothing by itself."""
    assert coord.running is not None
    cert = tls.load_certificate(coord.running.certificate_path.read_bytes(), "cert")
    with tls.pinned_channel(coord.running.address, cert, CHANNEL_OPTIONS) as channel:
        yield coordinator_pb2_grpc.CoordinatorStub(channel)


def signed(key: SigningKey, method: str, request: Any, **kwargs: Any) -> list[tuple[str, str]]:
    return sign_request(key, SERVICE + method, request.SerializeToString(), **kwargs)


def refused(
    call: Any, *args: Any, code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED, **kwargs: Any
) -> str:
    with pytest.raises(grpc.RpcError) as err:
        result = call(*args, timeout=10, **kwargs)
        if isinstance(result, Iterator):
            list(result)
    assert err.value.code() is code, err.value.details()
    return str(err.value.details())


LIST = pb.ListPartiesRequest()


def test_signed_request_by_a_registered_party_is_served(
    coord: Harness, raw: Any, alice: Party
) -> None:
    coord.register(alice)
    parties = raw.ListParties(LIST, metadata=signed(alice.key, "ListParties", LIST)).parties
    assert [p.name for p in parties] == ["alice-bank"]


def test_unsigned_request_is_refused(coord: Harness, raw: Any, alice: Party) -> None:
    coord.register(alice)
    assert refused(raw.ListParties, LIST).startswith("unsigned request: no 'detente-key-id'")
    partial = [m for m in signed(alice.key, "ListParties", LIST) if m[0] != SIGNATURE]
    assert "no 'detente-signature'" in refused(raw.ListParties, LIST, metadata=partial)


def test_unregistered_key_is_refused(coord: Harness, raw: Any, alice: Party) -> None:
    coord.register(alice)
    stranger = SigningKey.generate()
    message = refused(raw.ListParties, LIST, metadata=signed(stranger, "ListParties", LIST))
    assert message.startswith(f"unknown key: {stranger.verify_key.hex[:16]}… is not a registered")


@pytest.mark.parametrize(
    ("method", "request_message"),
    [
        ("ListParties", pb.ListPartiesRequest()),
        ("ListDatasets", pb.ListDatasetsRequest()),
        ("GetJob", pb.GetJobRequest(job_id="job-1")),
        ("ListJobs", pb.ListJobsRequest()),
        ("FetchOutput", pb.FetchOutputRequest(job_id="job-1", name="model")),
        ("GetEvidence", pb.GetEvidenceRequest(nonce=bytes(32))),
    ],
)
def test_read_only_methods_need_a_registered_party(
    coord: Harness, raw: Any, alice: Party, method: str, request_message: Any
) -> None:
    coord.register(alice)
    stranger = SigningKey.generate()
    call = getattr(raw, method)
    assert refused(call, request_message).startswith("unsigned request")
    message = refused(call, request_message, metadata=signed(stranger, method, request_message))
    assert message.startswith("unknown key")


def test_bad_signatures_are_refused(coord: Harness, raw: Any, alice: Party) -> None:
    coord.register(alice)
    mallory = SigningKey.generate()
    # Signed over another request body.
    other = pb.GetJobRequest(job_id="job-2")
    asked = pb.GetJobRequest(job_id="job-1")
    assert refused(raw.GetJob, asked, metadata=signed(alice.key, "GetJob", other)).startswith(
        "bad request signature by key"
    )
    # Signed for another method.
    assert "bad request signature" in refused(
        raw.ListParties, LIST, metadata=signed(alice.key, "ListJobs", LIST)
    )
    # Alice's key id, Mallory's signature.
    forged = dict(signed(mallory, "ListParties", LIST))
    forged[KEY_ID] = alice.hex
    assert "bad request signature" in refused(raw.ListParties, LIST, metadata=list(forged.items()))
    # A flipped signature byte.
    flipped = dict(signed(alice.key, "ListParties", LIST))
    flipped[SIGNATURE] = ("1" if flipped[SIGNATURE][0] != "1" else "2") + flipped[SIGNATURE][1:]
    assert "bad request signature" in refused(raw.ListParties, LIST, metadata=list(flipped.items()))


@pytest.mark.parametrize(("offset", "direction"), [(-301, "behind"), (301, "ahead of")])
def test_timestamp_outside_five_minutes_is_refused(
    coord: Harness, raw: Any, alice: Party, offset: int, direction: str
) -> None:
    coord.register(alice)
    metadata = signed(alice.key, "ListParties", LIST, now=time.time() + offset)
    message = refused(raw.ListParties, LIST, metadata=metadata)
    assert f"s {direction} the coordinator's clock (allowed: ±300 s)" in message
    # Within the window it is accepted.
    ok = signed(alice.key, "ListParties", LIST, now=time.time() - 240)
    assert raw.ListParties(LIST, metadata=ok).parties


def test_replayed_nonce_is_refused(coord: Harness, raw: Any, alice: Party) -> None:
    coord.register(alice)
    metadata = signed(alice.key, "ListParties", LIST)
    assert raw.ListParties(LIST, metadata=metadata).parties
    assert refused(raw.ListParties, LIST, metadata=metadata).startswith("replayed request")
    # A fresh nonce (a new signature) is served again.
    assert raw.ListParties(LIST, metadata=signed(alice.key, "ListParties", LIST)).parties


def test_registration_must_be_signed_by_the_key_it_registers(
    coord: Harness, raw: Any, alice: Party
) -> None:
    request = pb.RegisterPartyRequest(
        registration=alice.registration(), enrollment_token=coord.enroll(alice.name)
    )
    mallory = SigningKey.generate()
    message = refused(
        raw.RegisterParty, request, metadata=signed(mallory, "RegisterParty", request)
    )
    assert message.startswith("a registration must be sent signed by the key it registers")
    assert coord.running is not None and coord.running.store.list_parties() == []
    party = raw.RegisterParty(request, metadata=signed(alice.key, "RegisterParty", request))
    assert party.signing_key == alice.hex


def test_upload_signature_covers_the_manifest(
    coord: Harness, raw: Any, alice: Party, bob: Party
) -> None:
    coord.register(alice, bob)
    mine, other = seal_dataset(alice, "alice-2024"), seal_dataset(alice, "alice-2025")
    first = pb.UploadDatasetRequest(manifest=mine.manifest_bytes)
    metadata = signed(alice.key, "UploadDataset", first)
    # The signature of one manifest does not carry another one.
    message = refused(
        raw.UploadDataset,
        upload_requests(other.manifest_bytes, other.ciphertext),
        metadata=metadata,
    )
    assert message.startswith("bad request signature")
    assert coord.running is not None and coord.running.store.list_datasets() == []
    # Signed over its own first message, the upload is served.
    done = raw.UploadDataset(
        upload_requests(mine.manifest_bytes, mine.ciphertext), metadata=metadata
    )
    assert done.dataset_id == "alice-2024"
    # Another registered party cannot upload in Alice's name, even with her signed manifest.
    relayed = pb.UploadDatasetRequest(manifest=other.manifest_bytes)
    message = refused(
        raw.UploadDataset,
        upload_requests(other.manifest_bytes, other.ciphertext),
        metadata=signed(bob.key, "UploadDataset", relayed),
        code=grpc.StatusCode.PERMISSION_DENIED,
    )
    assert "only its owner uploads it" in message
    assert [d.dataset_id for d in coord.running.store.list_datasets()] == ["alice-2024"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({KEY_ID: "AB" * 32}, "64 lowercase hex"),
        ({TIMESTAMP: "-5"}, "Unix seconds"),
        ({TIMESTAMP: "0123"}, "Unix seconds"),
        ({NONCE: "00" * 8}, "16 random bytes"),
        ({SIGNATURE: "zz" * 64}, "64 bytes as lowercase hex"),
    ],
)
def test_malformed_metadata_is_refused(
    coord: Harness, raw: Any, alice: Party, change: dict[str, str], message: str
) -> None:
    coord.register(alice)
    metadata = {**dict(signed(alice.key, "ListParties", LIST)), **change}
    assert message in refused(raw.ListParties, LIST, metadata=list(metadata.items()))


def test_duplicate_metadata_is_refused(coord: Harness, raw: Any, alice: Party) -> None:
    coord.register(alice)
    metadata = signed(alice.key, "ListParties", LIST)
    doubled = [*metadata, (NONCE, "00" * 16)]
    assert "appears twice" in refused(raw.ListParties, LIST, metadata=doubled)


# --------------------------------------------------------------------------- units


def test_signed_message_is_the_documented_byte_string() -> None:
    message = signed_message(
        "/detente.v1.Coordinator/ListJobs", "ab" * 32, 1_700_000_000, "0f" * 16
    )
    assert message == (
        b"detente/v1 request-signature\n/detente.v1.Coordinator/ListJobs\n"
        + b"ab" * 32
        + b"\n1700000000\n"
        + b"0f" * 16
    )
    key = SigningKey.from_raw(bytes(range(32)))
    # Ed25519 is deterministic (RFC 8032 §5.1.6): a fixed key and message give fixed bytes.
    assert key.verify_key.hex == "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    assert key.sign(message).hex() == (
        "44328bfb87eb43fb6ad75604ee8ea2d2426670f9047458c3159d86277e7bf530"
        "0c001e6359d3abcd349e84c7546b79e8aec87588f38725f5859f174537221f01"
    )
    for bad in [
        ("ListJobs", "ab" * 32, 1, "0f" * 16),
        ("/a/b\n", "ab" * 32, 1, "0f" * 16),
        ("/a/b", "AB" * 32, 1, "0f" * 16),
        ("/a/b", "ab" * 32, -1, "0f" * 16),
        ("/a/b", "ab" * 32, 1, "0f" * 15),
    ]:
        with pytest.raises(ValueError):
            signed_message(*bad)


def test_nonce_cache_forgets_only_after_the_window() -> None:
    cache = NonceCache(window=300, max_entries=3)
    cache.remember("k", "n1", timestamp=1000, now=1000)
    with pytest.raises(ReplayedRequest):
        cache.remember("k", "n1", timestamp=1000, now=1299)
    cache.remember("other-key", "n1", timestamp=1000, now=1000)  # nonces are per key
    cache.remember("k", "n2", timestamp=1000, now=1000)
    with pytest.raises(ReplayCacheFull):
        cache.remember("k", "n3", timestamp=1000, now=1200)
    # After timestamp + window the entries are pruned; such a request is stale anyway.
    cache.remember("k", "n3", timestamp=1301, now=1301)
    assert len(cache) == 1


def test_a_full_replay_cache_refuses_rather_than_accepts(coord: Harness, alice: Party) -> None:
    from coordinator.auth import _Received

    coord.register(alice)
    assert coord.running is not None
    store = coord.running.store
    interceptor = RequestAuthInterceptor(
        lambda key: store.get_party_by_key(key) is not None, nonces=NonceCache(max_entries=1)
    )
    body = LIST.SerializeToString()
    received = _Received(request_auth.body_sha256(body), LIST)
    method = SERVICE + "ListParties"
    interceptor.check(method, sign_request(alice.key, method, body), received)
    with pytest.raises(ReplayCacheFull):
        interceptor.check(method, sign_request(alice.key, method, body), received)
    with pytest.raises(UnauthenticatedRequest, match="unknown key"):
        interceptor.check(method, sign_request(SigningKey.generate(), method, body), received)
