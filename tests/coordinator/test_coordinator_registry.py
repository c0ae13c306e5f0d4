"""Party registration through a real coordinator."""

from __future__ import annotations

import grpc
import pytest
from coordinator_testkit import Harness, Party

from protocols.statements import Envelope, pae
from protocols.wire.v1 import coordinator_pb2


def register(coord: Harness, registration: bytes) -> coordinator_pb2.Party:
    return coord.stub.RegisterParty(coordinator_pb2.RegisterPartyRequest(registration=registration))


def test_register_party(coord: Harness, alice: Party) -> None:
    party = register(coord, alice.registration())
    assert party.name == "alice-bank"
    assert party.signing_key == alice.hex
    assert party.hpke_key == alice.hpke.public_key.hex
    assert party.registered_at > 0
    listed = coord.stub.ListParties(coordinator_pb2.ListPartiesRequest()).parties
    assert [p.signing_key for p in listed] == [alice.hex]
    # Anyone can re-check the stored registration.
    assert Envelope.from_bytes(listed[0].registration).signer.hex == alice.hex


def test_same_registration_twice_is_idempotent(coord: Harness, alice: Party) -> None:
    first = register(coord, alice.registration())
    second = register(coord, alice.registration())
    assert second.registered_at == first.registered_at
    assert len(coord.stub.ListParties(coordinator_pb2.ListPartiesRequest()).parties) == 1


def test_forged_registration_is_refused(coord: Harness, alice: Party) -> None:
    mallory = Party("mallory")
    genuine = Envelope.from_bytes(alice.registration())
    # Alice's statement and key id, but Mallory's signature.
    forged = Envelope(
        genuine.payload_type,
        genuine.payload,
        genuine.signer,
        mallory.key.sign(pae(genuine.payload_type, genuine.payload)),
    )
    with pytest.raises(grpc.RpcError) as err:
        register(coord, forged.to_bytes())
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "signature does not verify" in err.value.details()
    assert coord.running is not None and coord.running.store.list_parties() == []


def test_garbage_registration_is_invalid_argument(coord: Harness) -> None:
    with pytest.raises(grpc.RpcError) as err:
        register(coord, b"not json")
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_taken_name_is_refused(coord: Harness, alice: Party) -> None:
    register(coord, alice.registration())
    impostor = Party("alice-bank")
    with pytest.raises(grpc.RpcError) as err:
        register(coord, impostor.registration())
    assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert "alice-bank" in err.value.details()
