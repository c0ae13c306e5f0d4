"""The enclave's identity survives restarts, and its sealed keys are invisible on the host."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest
from worker_testkit import Worker, build_worker_instance

from enclave_worker import identity, job_process
from enclave_worker.identity import EnclaveIdentity
from libos.config import Mount
from libos.image import Measurement
from libos.runtime import SimRuntime
from libos.sim import SimPlatform
from protocols import statements
from protocols.documents import IdentityDocument
from protocols.errors import FormatError
from protocols.keys import HpkePrivateKey, Kem, SigningKey

MRENCLAVE = hashlib.sha256(b"identity test enclave").hexdigest()
SEAL_LABEL = "enclave-identity/v1"  # what identity.py has always sealed under


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


def _runtime(tmp_path: Path, mounts: tuple[Mount, ...] = ()) -> SimRuntime:
    measurement = Measurement(MRENCLAVE, "00" * 32, "sim", False, 1, 1, 0)
    return SimRuntime(
        measurement, tmp_path / "instance", SimPlatform(tmp_path / "platform"), mounts
    )


def _keys(pq: bool) -> tuple[SigningKey, HpkePrivateKey, HpkePrivateKey | None]:
    pq_key = HpkePrivateKey.generate(Kem.MLKEM768_X25519) if pq else None
    return SigningKey.generate(), HpkePrivateKey.generate(), pq_key


def _same_keys(a: EnclaveIdentity, b: EnclaveIdentity) -> bool:
    return a.private_keys() == b.private_keys()


@pytest.mark.parametrize("pq", [True, False])
def test_identities_sealed_by_earlier_workers_still_open(tmp_path: Path, pq: bool) -> None:
    # The sealed format is unchanged: the exact JSON earlier workers sealed
    # (without "hpke_pq" before the PQ option) unseals to the same keys.
    signing, hpke, pq_key = _keys(pq)
    old = {"signing": signing.private_raw().hex(), "hpke": hpke.private_raw().hex()}
    if pq_key is not None:
        old["hpke_pq"] = pq_key.private_raw().hex()
    rt = _runtime(tmp_path)
    (rt.sealed_dir / "identity.sealed").write_bytes(rt.seal(json.dumps(old).encode(), SEAL_LABEL))
    loaded = identity.load_or_create(rt)
    assert loaded.private_keys() == old
    assert loaded.signing_key.verify_key == signing.verify_key
    assert loaded.hpke_key.public_key == hpke.public_key
    assert (loaded.hpke_pq_key is None) == (pq_key is None)
    assert json.dumps(loaded.private_keys()).encode() == json.dumps(old).encode()


def test_a_new_identity_is_sealed_in_the_default_mount_and_opens_again(tmp_path: Path) -> None:
    mounts = (Mount("/data", "data", "mrenclave"),)
    first = identity.load_or_create(_runtime(tmp_path, mounts))
    assert first.hpke_pq_key is not None and first.mrenclave == MRENCLAVE
    rt = _runtime(tmp_path, mounts)
    fs = rt.default_mount()
    assert fs is not None and fs.exists("keys/identity.sealed")
    assert json.loads(rt.unseal(fs.read_bytes("keys/identity.sealed"), SEAL_LABEL)) == (
        first.private_keys()
    )
    assert _same_keys(identity.load_or_create(rt), first)


@pytest.mark.parametrize("pq", [True, False])
def test_the_job_payload_carries_the_same_key_encoding(pq: bool) -> None:
    signing, hpke, pq_key = _keys(pq)
    enclave = EnclaveIdentity(signing, hpke, "sim", MRENCLAVE, pq_key)
    payload = job_process._payload(enclave, b"terms", [b"approval"], [b"manifest"], 1.5)
    assert json.loads(payload)["identity"]["keys"] == enclave.private_keys()
    received, doc = job_process._decode_payload(payload)
    assert _same_keys(received, enclave)
    assert (received.backend, received.mrenclave) == ("sim", MRENCLAVE)
    assert doc["accepted_at"] == 1.5


def test_key_encoding_errors_name_what_is_wrong() -> None:
    keys = EnclaveIdentity(*_keys(False)[:2], "sim", MRENCLAVE).private_keys()
    assert set(keys) == {"signing", "hpke"}
    with pytest.raises(FormatError, match="sealed identity lacks 'signing'"):
        EnclaveIdentity.from_private_keys({"hpke": keys["hpke"]}, "sim", "", "sealed identity")
    with pytest.raises(FormatError, match="job payload keys: HPKE key is not valid hex"):
        EnclaveIdentity.from_private_keys({**keys, "hpke": "zz"}, "sim", "", "job payload keys")
    with pytest.raises(FormatError, match="must be a JSON object"):
        EnclaveIdentity.from_private_keys(None, "sim", "")
