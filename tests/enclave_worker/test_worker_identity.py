"""The enclave's identity survives restarts, and its sealed keys are invisible on the host."""

from __future__ import annotations

import secrets
from pathlib import Path

from worker_testkit import Worker, build_worker_instance

from protocols import statements
from protocols.documents import IdentityDocument


def _identity(worker: Worker) -> IdentityDocument:
    evidence = worker.client().get_evidence(secrets.token_bytes(32))
    envelope = statements.Envelope.from_bytes(evidence.identity)
    return IdentityDocument.from_dict(statements.verify(envelope, statements.IDENTITY, None, "id"))


def test_a_restarted_worker_keeps_its_keys_sealed_in_the_encrypted_mount(tmp_path: Path):
    instance, measured = build_worker_instance(tmp_path / "instance")
    worker = Worker(instance, measured).start()
    try:
        first = _identity(worker)
    finally:
        worker.stop()
    worker = Worker(instance, measured).start()
    try:
        second = _identity(worker)
    finally:
        worker.stop()
    assert first.signing_key == second.signing_key and first.hpke_key == second.hpke_key
    # A fresh TLS key per start, bound anew into the identity document.
    assert first.tls_public_key_sha256 != second.tls_public_key_sha256
    # The sealed keys live in the encrypted file system: no file on the host is
    # named after them, and the legacy sealed/ location holds nothing.
    image = instance / "image"  # the worker's own sources (identity.py) are public
    names = [p.name for p in instance.rglob("*") if image not in p.parents]
    assert not any("identity" in name for name in names), names
    assert not list((instance / "sealed").glob("*"))
