"""Party registration through a real coordinator."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from coordinator_testkit import BOTH_DATABASES, Harness, Party

from protocols.documents import Registration
from protocols.statements import Envelope, pae
from protocols.wire.v1 import coordinator_pb2

# On SQLite and on a real PostgreSQL (a throwaway server, conftest.postgres).
pytestmark = pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)


def register(
    coord: Harness, registration: bytes, token: str | None = None
) -> coordinator_pb2.Party:
    """Register with ``token``, or by default a fresh one for the registration's name."""
    if token is None:
        token = coord.enroll(
            Registration.from_dict(json.loads(Envelope.from_bytes(registration).payload)).name
        )
    return coord.stub.RegisterParty(
        coordinator_pb2.RegisterPartyRequest(registration=registration, enrollment_token=token)
    )


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
    second = register(coord, alice.registration(), token="")  # no token needed to re-register
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
        register(coord, forged.to_bytes(), token=coord.enroll("alice-bank"))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "signature does not verify" in err.value.details()
    assert coord.running is not None and coord.running.store.list_parties() == []


def test_garbage_registration_is_invalid_argument(coord: Harness) -> None:
    with pytest.raises(grpc.RpcError) as err:
        register(coord, b"not json", token="")
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_taken_name_is_refused(coord: Harness, alice: Party) -> None:
    register(coord, alice.registration())
    impostor = Party("alice-bank")
    with pytest.raises(grpc.RpcError) as err:
        register(coord, impostor.registration(), token="")
    assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert "alice-bank" in err.value.details()


# --------------------------------------------------------------------------- enrollment


def refused_registration(coord: Harness, party: Party, token: str) -> str:
    with pytest.raises(grpc.RpcError) as err:
        register(coord, party.registration(), token=token)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED, err.value.details()
    return str(err.value.details())


def test_registration_without_a_token_is_refused_and_names_the_command(
    coord: Harness, alice: Party
) -> None:
    message = refused_registration(coord, alice, "")
    assert "detente coordinator enroll --name alice-bank" in message
    assert "--enrollment-token" in message
    assert coord.running is not None and coord.running.store.list_parties() == []


def test_a_wrong_or_foreign_token_is_refused(coord: Harness, alice: Party, bob: Party) -> None:
    coord.enroll("alice-bank")
    assert "no valid enrollment token" in refused_registration(coord, alice, "guessed-token")
    # Bob's token does not register Alice: a token is for one name.
    bobs = coord.enroll("bob-insurer")
    assert "no valid enrollment token" in refused_registration(coord, alice, bobs)
    register(coord, bob.registration(), token=bobs)
    assert coord.running is not None
    assert [p.name for p in coord.running.store.list_parties()] == ["bob-insurer"]


def test_a_token_registers_once(coord: Harness, alice: Party) -> None:
    token = coord.enroll("alice-bank")
    register(coord, alice.registration(), token=token)
    # Another key under the same name with the same token: the name is taken, and
    # the token is spent.
    thief = Party("alice-bank")
    with pytest.raises(grpc.RpcError) as err:
        register(coord, thief.registration(), token=token)
    assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert coord.running is not None
    (used,) = coord.running.store.list_enrollments()
    assert used.used_by == alice.hex and used.token_sha256 != token


def test_an_expired_token_is_refused(coord: Harness, alice: Party) -> None:
    from coordinator.handler import issue_enrollment

    assert coord.running is not None
    token, _ = issue_enrollment(coord.running.store, "alice-bank", ttl_seconds=1)
    import time

    time.sleep(1.1)
    assert "has expired" in refused_registration(coord, alice, token)
    assert coord.running.store.list_parties() == []


def test_the_operator_cli_issues_a_token_that_registers(
    coord: Harness, home: Path, alice: Party, db_url: str | None
) -> None:
    from typer.testing import CliRunner

    from coordinator.cli import app

    where = ["--home", str(home), *(["--db-url", db_url] if db_url else [])]
    result = CliRunner().invoke(app, ["enroll", "--name", "alice-bank", *where, "--json"])
    assert result.exit_code == 0, result.output
    token = json.loads(result.output)["token"]
    assert register(coord, alice.registration(), token=token).name == "alice-bank"
    # The database keeps only the token's hash.
    if db_url is None:
        assert token.encode() not in (home / "coordinator.db").read_bytes()
    else:
        assert coord.running is not None
        assert token not in repr(coord.running.store.list_enrollments())
    again = CliRunner().invoke(app, ["enroll", "--name", "alice-bank", *where])
    assert again.exit_code == 1 and "already registered" in again.output
