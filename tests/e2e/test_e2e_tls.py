"""TLS channels between real processes: the enclave worker's RA-TLS certificate, a
coordinator that refuses an enclave outside its policy, a party with a wrong pin."""

from __future__ import annotations

import hashlib
import secrets
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from detente.cluster import detente_command
from party_client.home import PartyHome
from protocols import ratls, statements, tls
from protocols.attestation import Evidence, verify_evidence
from protocols.documents import IdentityDocument
from protocols.policy import AttestationPolicy
from protocols.wire.v1 import enclave_pb2, enclave_pb2_grpc
from tests.e2e.conftest import Running
from tests.e2e.conftest import detente as run_detente

pytestmark = pytest.mark.e2e


def detente(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """The real CLI; the caller checks the outcome."""
    return run_detente(args, home, check=False)


def test_enclave_worker_serves_an_ra_tls_certificate_bound_to_its_identity(
    running: Running,
) -> None:
    policy = AttestationPolicy.load(running.policy())
    cert_der = tls.peer_certificate(running.enclave)
    enclave = ratls.verify_ratls_certificate(cert_der, policy)
    assert enclave.mrenclave == running.measured["mrenclave"] and enclave.simulation
    cert = tls.load_certificate(cert_der, "enclave certificate")
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert enclave.identity.tls_public_key_sha256 == hashlib.sha256(spki).hexdigest()

    # The nonce-based evidence a party gets names the same TLS key.
    nonce = secrets.token_bytes(32)
    with running.remote(running.party("tls-checker")) as remote:
        reply = remote.evidence(nonce)
    attested = verify_evidence(Evidence(reply.identity, reply.quote, reply.backend), nonce, policy)
    assert attested.identity.tls_public_key_sha256 == hashlib.sha256(spki).hexdigest()
    document = IdentityDocument.from_dict(
        statements.verify(
            statements.Envelope.from_bytes(reply.identity), statements.IDENTITY, None, "identity"
        )
    )
    assert document == enclave.identity


def test_enclave_refuses_plaintext_and_other_pins(running: Running) -> None:
    with grpc.insecure_channel(running.enclave) as channel:
        with pytest.raises(grpc.RpcError) as err:
            enclave_pb2_grpc.EnclaveStub(channel).GetEvidence(
                enclave_pb2.EvidenceRequest(nonce=bytes(32)), timeout=10
            )
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    impostor = tls.self_signed_certificate(tls.generate_key(), ratls.COMMON_NAME)
    with tls.pinned_channel(running.enclave, impostor) as channel:
        with pytest.raises(grpc.RpcError) as err:
            enclave_pb2_grpc.EnclaveStub(channel).GetEvidence(
                enclave_pb2.EvidenceRequest(nonce=bytes(32)), timeout=10
            )
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


def test_party_with_a_wrong_pinned_certificate_gets_a_clear_error(
    running: Running, tmp_path: Path
) -> None:
    impostor = tmp_path / "impostor.crt"
    impostor.write_bytes(
        tls.certificate_pem(tls.self_signed_certificate(tls.generate_key(), "detente-coordinator"))
    )
    home = tmp_path / "party-pinned-wrong"
    done = detente(
        [
            "party",
            "init",
            "--name",
            "pinned-wrong",
            "--coordinator",
            running.address,
            "--coordinator-cert",
            str(impostor),
        ],
        home,
    )
    assert done.returncode == 1
    message = " ".join(done.stderr.split())
    assert (
        f"the coordinator's TLS certificate is not the one pinned in {home / 'coordinator.crt'}"
        in message
    )
    assert "detente party init --coordinator-cert FILE" in message


def test_coordinator_refuses_an_enclave_outside_its_policy(
    running: Running, tmp_path: Path
) -> None:
    home = tmp_path / "strict-coordinator"
    port_file = tmp_path / "strict.port"
    wrong = running.policy(mrenclave="00" * 32)
    log = tmp_path / "strict.out"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                *detente_command(),
                "coordinator",
                "serve",
                "--home",
                str(home),
                "--port-file",
                str(port_file),
                "--enclave",
                running.enclave,
                "--enclave-policy",
                str(wrong),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "coordinator did not start"
            time.sleep(0.05)
        address = f"127.0.0.1:{int(port_file.read_text())}"
        cert = home / "coordinator-tls.crt"
        party = tmp_path / "party-strict"
        enrolled = detente(
            ["coordinator", "enroll", "--home", str(home), "--name", "strict"], party
        )
        token = enrolled.stdout.splitlines()[1]
        done = detente(
            [
                *("party", "init", "--name", "strict", "--coordinator", address),
                *("--coordinator-cert", str(cert), "--policy", str(running.policy())),
                *("--enrollment-token", token),
            ],
            party,
        )
        assert done.returncode == 0, done.stderr
        assert PartyHome(party).coordinator_cert_path.read_bytes() == cert.read_bytes()
        done = detente(["party", "attest"], party)
        assert done.returncode == 1
        message = " ".join(done.stderr.split())
        assert f"the coordinator does not trust the enclave at {running.enclave}" in message
        assert "RA-TLS certificate refused — measurement" in message
        assert "is not in the policy" in message
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)
    out = log.read_text()
    assert f"its certificate is {cert.resolve()}" in out
    assert "refused" in (home / "coordinator.log").read_text()
