"""Attest the enclave: send a fresh nonce, verify its evidence under the party's policy, keep it."""

from __future__ import annotations

import secrets
from typing import Any

from party_client.home import PartyHome
from party_client.remote import Coordinator, connected
from protocols.attestation import Evidence, VerifiedEnclave, verify_evidence
from protocols.policy import AttestationPolicy


def attest(
    home: PartyHome, policy: AttestationPolicy, *, remote: Coordinator | None = None
) -> VerifiedEnclave:
    """Send a fresh nonce, verify the evidence, keep the record. Raises EvidenceRefused."""
    nonce = secrets.token_bytes(32)
    with connected(home, remote) as coordinator:
        reply = coordinator.evidence(nonce)
    evidence = Evidence(reply.identity, reply.quote, reply.backend)
    enclave = verify_evidence(evidence, nonce, policy)
    home.save_record(evidence, nonce, enclave)
    return enclave


def enclave_summary(enclave: VerifiedEnclave) -> dict[str, Any]:
    """The attested enclave as `detente party attest --json` prints it."""
    return {
        "mrenclave": enclave.mrenclave,
        "mrsigner": enclave.mrsigner,
        "simulation": enclave.simulation,
        "enclave_signing_key": enclave.identity.signing_key.hex,
        "enclave_hpke_key": enclave.identity.hpke_key.hex,
        "verdict": [
            {"rule": r.name, "passed": r.passed, "detail": r.detail} for r in enclave.verdict
        ],
    }
