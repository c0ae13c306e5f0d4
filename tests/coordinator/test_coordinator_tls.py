"""TLS channels of the coordinator: RA-TLS to the enclave, a pinned certificate for parties.

Real servers on port 0: the coordinator in this process, and a FAKE enclave
(scripted answers) serving TLS with a real RA-TLS certificate — or with a
certificate that must be refused.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from coordinator_testkit import (
    MRENCLAVE,
    FakeEnclave,
    Harness,
    Party,
    fake_enclave_credentials,
    fake_enclave_policy,
    job_terms,
    seal_dataset,
)
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from coordinator import cli
from coordinator.enclave_client import EnclaveCallError, EnclaveClient, EnclaveNotTrusted
from coordinator.server import certificate_path, start, tls_identity
from party_client import register
from party_client.home import PartyHome
from party_client.remote import CoordinatorError
from protocols import ratls, tls
from protocols.cli_convention import EXIT_ERROR, EXIT_USAGE
from protocols.errors import DetenteError, FormatError, NotAllowed, PolicyError
from protocols.grpc_status import CHANNEL_OPTIONS
from protocols.wire.v1 import coordinator_pb2, coordinator_pb2_grpc, enclave_pb2_grpc

NOT_ALLOWED = "cd" * 32


def serve_fake(
    key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> tuple[FakeEnclave, grpc.Server, str]:
    fake = FakeEnclave()
    server = grpc.server(futures.ThreadPoolExecutor(4), options=CHANNEL_OPTIONS)
    enclave_pb2_grpc.add_EnclaveServicer_to_server(fake, server)
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(key, cert))
    server.start()
    return fake, server, f"127.0.0.1:{port}"


@pytest.fixture
def impostor_certs() -> dict[str, tuple[ec.EllipticCurvePrivateKey, x509.Certificate]]:
    """Certificates an enclave host could present instead of a genuine one."""
    plain_key = tls.generate_key()
    _, genuine = fake_enclave_credentials()
    evidence = ratls.parse_ratls_certificate(tls.certificate_der(genuine)).evidence
    lifted_key = tls.generate_key()
    return {
        "plain TLS certificate": (plain_key, tls.self_signed_certificate(plain_key, "x")),
        "evidence lifted from another certificate": (
            lifted_key,
            ratls.create_certificate(lifted_key, evidence),
        ),
        "measurement outside the policy": fake_enclave_credentials(NOT_ALLOWED),
    }


EXPECTED_RULE = {
    "plain TLS certificate": "extension: it carries no attestation evidence",
    "evidence lifted from another certificate": "tls-key: the attested identity names TLS key",
    "measurement outside the policy": f"measurement: MRENCLAVE {NOT_ALLOWED} is not in the policy",
}


@pytest.mark.parametrize("case", sorted(EXPECTED_RULE))
def test_enclave_client_refuses_a_certificate_without_valid_evidence(
    case: str, impostor_certs: dict[str, tuple[ec.EllipticCurvePrivateKey, x509.Certificate]]
) -> None:
    fake, server, address = serve_fake(*impostor_certs[case])
    try:
        client = EnclaveClient(address, fake_enclave_policy())
        with pytest.raises(EnclaveNotTrusted) as info:
            client.get_evidence(bytes(32))
        message = str(info.value)
        assert f"the coordinator does not trust the enclave at {address}" in message
        assert "RA-TLS certificate refused — " + EXPECTED_RULE[case] in message
        assert fake.nonces == []  # no application byte reached the server
    finally:
        server.stop(0).wait()


def test_enclave_client_talks_to_a_genuine_enclave(
    fake_enclave: tuple[FakeEnclave, str],
) -> None:
    fake, address = fake_enclave
    client = EnclaveClient(address, fake_enclave_policy())
    der, enclave = client.verify()
    assert enclave.mrenclave == MRENCLAVE
    assert enclave.identity.tls_public_key_sha256 == tls.public_key_sha256(
        tls.load_certificate(der, "enclave certificate")
    )
    assert client.get_evidence(b"n" * 32).quote == b"Q" * 100
    assert fake.nonces == [b"n" * 32]


def test_unreachable_enclave_is_unavailable_not_untrusted() -> None:
    client = EnclaveClient("127.0.0.1:1", fake_enclave_policy())
    with pytest.raises(EnclaveCallError) as info:
        client.get_evidence(bytes(32))
    assert info.value.code == "UNAVAILABLE"
    assert "cannot reach the enclave at 127.0.0.1:1" in str(info.value)


@pytest.fixture
def outside_policy(home: Path) -> Iterator[tuple[Harness, FakeEnclave]]:
    """A coordinator whose enclave policy excludes the (FAKE) enclave's measurement."""
    fake, server, address = serve_fake(*fake_enclave_credentials(NOT_ALLOWED))
    coord = Harness(home, enclave=address, enclave_policy=fake_enclave_policy(MRENCLAVE))
    yield coord, fake
    coord.stop()
    server.stop(0).wait()


def test_policy_excluding_the_measurement_fails_get_evidence(
    outside_policy: tuple[Harness, FakeEnclave], alice: Party
) -> None:
    coord, fake = outside_policy
    coord.register(alice)
    with pytest.raises(grpc.RpcError) as err:
        coord.stub.GetEvidence(coordinator_pb2.GetEvidenceRequest(nonce=b"n" * 32))
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "the coordinator does not trust the enclave" in err.value.details()
    assert f"MRENCLAVE {NOT_ALLOWED} is not in the policy" in err.value.details()
    assert fake.nonces == []


def test_a_worker_outside_the_policy_gets_no_job_and_no_data(
    outside_policy: tuple[Harness, FakeEnclave], alice: Party, bob: Party
) -> None:
    """The only worker fails the policy: the job waits in approved, nothing reaches the
    worker, and its record (and the audit log) says which rule it failed."""
    coord, fake = outside_policy
    coord.register(alice, bob)
    data = [seal_dataset(alice, "alice-2024"), seal_dataset(bob, "bob-2024")]
    for d in data:
        coord.upload(d)
    terms = job_terms(alice, "job-1", data)
    coord.propose(terms)
    coord.approve(alice, "job-1", terms)
    coord.approve(bob, "job-1", terms)
    assert coord.running is not None
    assert not coord.running.handler.scheduler.wait_idle(2)
    assert coord.job("job-1").state == "approved"
    assert fake.specs == [] and fake.chunks == []
    (worker,) = coord.running.store.list_workers()
    assert worker.health == "refused by the policy"
    assert f"MRENCLAVE {NOT_ALLOWED} is not in the policy" in worker.problem
    assert worker.attested_at is None and worker.slots == 0
    refusals = [e for e in coord.running.store.audit_entries() if e.event == "worker.refused"]
    assert [e.subject for e in refusals] == [worker.address]  # once, not at every check
    assert "is not in the policy" in refusals[0].detail["reason"]


def test_an_enclave_needs_a_policy(home: Path) -> None:
    with pytest.raises(PolicyError, match="--enclave-policy"):
        start(home, enclave="127.0.0.1:1", log_to_file=False)


def test_serve_refuses_enclave_without_policy_and_a_bad_policy(tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(cli.app, ["serve", "--home", str(tmp_path), "--enclave", "127.0.0.1:1"])
    assert done.exit_code == EXIT_USAGE and "--enclave needs --enclave-policy FILE" in done.output
    bad = tmp_path / "policy.toml"
    bad.write_text("mrenclave = 5\n")
    done = runner.invoke(
        cli.app,
        [
            "serve",
            "--home",
            str(tmp_path),
            "--enclave",
            "127.0.0.1:1",
            "--enclave-policy",
            str(bad),
        ],
    )
    assert done.exit_code == EXIT_ERROR and "mrenclave = 5" in done.output
    tls_identity(tmp_path)
    (tmp_path / "coordinator-tls.key").chmod(0o644)
    done = runner.invoke(cli.app, ["serve", "--home", str(tmp_path)])
    assert done.exit_code == EXIT_ERROR and "readable by others" in done.output


# --------------------------------------------------------------------------- party channel


def test_coordinator_certificate_is_made_once_with_a_private_key(home: Path) -> None:
    _, cert = tls_identity(home)
    key_file = home / "coordinator-tls.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert tls.common_name(cert) == "detente-coordinator"
    again_key, again = tls_identity(home)
    assert again == cert
    assert tls.public_key_sha256(again_key.public_key()) == tls.public_key_sha256(cert)
    key_file.chmod(0o644)
    with pytest.raises(PolicyError, match="readable by others"):
        tls_identity(home)
    key_file.chmod(0o600)
    other = tls.self_signed_certificate(tls.generate_key(), "detente-coordinator")
    certificate_path(home).write_bytes(tls.certificate_pem(other))
    with pytest.raises(PolicyError, match="is not the certificate of"):
        tls_identity(home)


def test_coordinator_serves_tls_only(coord: Harness) -> None:
    assert coord.running is not None
    with grpc.insecure_channel(coord.running.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ListParties(coordinator_pb2.ListPartiesRequest(), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    presented = tls.peer_certificate(coord.running.address)
    assert presented == tls.certificate_der(
        tls.load_certificate(coord.running.certificate_path.read_bytes(), "cert")
    )


def _party_home(root: Path, address: str, pinned: Path) -> PartyHome:
    home = PartyHome(root)
    home.create_identity("tls-party", address)
    home.pin_coordinator_certificate(pinned)
    return home


def test_party_with_the_pinned_certificate_registers(coord: Harness, tmp_path: Path) -> None:
    assert coord.running is not None
    home = _party_home(tmp_path / "party", coord.running.address, coord.running.certificate_path)
    registration = register(home, coord.enroll("tls-party"))
    assert [p.name for p in coord.running.store.list_parties()] == ["tls-party"]
    assert registration.name == "tls-party"


def test_wrong_pinned_coordinator_certificate_is_a_clear_error(
    coord: Harness, tmp_path: Path
) -> None:
    assert coord.running is not None
    impostor = tmp_path / "impostor.crt"
    impostor.write_bytes(
        tls.certificate_pem(tls.self_signed_certificate(tls.generate_key(), "detente-coordinator"))
    )
    home = _party_home(tmp_path / "party", coord.running.address, impostor)
    with pytest.raises(CoordinatorError) as info:
        register(home)
    message = str(info.value)
    assert message.startswith(
        f"the coordinator's TLS certificate is not the one pinned in {home.coordinator_cert_path}"
    )
    assert tls.certificate_sha256(tls.load_certificate(impostor.read_bytes(), "c"))[:16] in message
    assert info.value.kind is DetenteError  # not the coordinator's refusal
    assert coord.running.store.list_parties() == []


def test_party_client_raises_the_catalogue_class_the_coordinator_refused_with(
    coord: Harness, tmp_path: Path
) -> None:
    assert coord.running is not None
    home = _party_home(tmp_path / "party", coord.running.address, coord.running.certificate_path)
    with pytest.raises(CoordinatorError) as info:
        register(home)  # no enrollment token
    assert info.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert info.value.kind is NotAllowed
    assert "needs an enrollment token" in str(info.value)


def test_party_without_a_pinned_certificate_is_told_how_to_pin(tmp_path: Path) -> None:
    home = PartyHome(tmp_path / "party")
    home.create_identity("tls-party", "127.0.0.1:1")
    from protocols.errors import SetupError

    with pytest.raises(SetupError, match="--coordinator-cert FILE"):
        register(home)
    with pytest.raises(FormatError, match=r"not an X\.509 certificate"):
        home.pin_coordinator_certificate(home.config_path)


def test_party_reports_an_unreachable_coordinator(tmp_path: Path, coord: Harness) -> None:
    assert coord.running is not None
    home = _party_home(tmp_path / "party", "127.0.0.1:1", coord.running.certificate_path)
    with pytest.raises(CoordinatorError) as info:
        register(home)
    assert str(info.value) == "cannot reach the coordinator at 127.0.0.1:1: is it running?"
    assert info.value.kind is DetenteError
