"""The enclave with both HPKE suites: PQ parties' data and results use ML-KEM-768+X25519."""

from __future__ import annotations

import hashlib
import json
import secrets
import time

import numpy as np
import pyarrow as pa
import pytest

from enclave_worker import jobs
from enclave_worker.identity import EnclaveIdentity
from party_client.tables import to_ipc
from protocols import hpke, stream
from protocols.documents import (
    Approval,
    DatasetManifest,
    IdentityDocument,
    JobTerms,
    Recipient,
    ResultStatement,
    schema_columns,
    schema_sha256,
)
from protocols.errors import ConsentError
from protocols.keys import HpkePrivateKey, Kem, SigningKey
from protocols.statements import Envelope

MRENCLAVE = "cd" * 32
PQ = Kem.MLKEM768_X25519


def _enclave() -> EnclaveIdentity:
    return EnclaveIdentity(
        SigningKey.generate(),
        HpkePrivateKey.generate(),
        "sim",
        MRENCLAVE,
        HpkePrivateKey.generate(PQ),
    )


def _table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2))
    y = (x[:, 0] > 0).astype(np.int64)
    return pa.table({"a": x[:, 0], "b": x[:, 1], "label": y})


def _seal(
    identity: IdentityDocument, owner: SigningKey, kem: Kem, dataset_id: str, table: pa.Table
) -> tuple[bytes, bytes]:
    """What `detente party upload` does for a party whose HPKE key is of ``kem``."""
    key = secrets.token_bytes(32)
    blob = stream.seal_stream(key, to_ipc(table), dataset_id.encode(), chunk_size=4096)
    enclave_key = identity.data_key_recipient(kem)
    manifest = DatasetManifest(
        dataset_id=dataset_id,
        name="t.csv",
        owner_key=owner.verify_key,
        schema_sha256=schema_sha256(schema_columns(table.schema)),
        row_count=table.num_rows,
        ciphertext_sha256=hashlib.sha256(blob).hexdigest(),
        ciphertext_size=len(blob),
        wrapped_key=hpke.wrap_key(key, enclave_key, hpke.data_key_info(dataset_id, enclave_key)),
        sealed_to_mrenclave=MRENCLAVE,
        sealed_to_hpke_key=enclave_key,
    ).sign(owner)
    return manifest.to_bytes(), blob


def test_identity_document_offers_both_suites() -> None:
    enclave = _enclave()
    envelope = Envelope.from_bytes(enclave.envelope)
    doc = IdentityDocument.from_dict(json.loads(envelope.payload))
    assert doc.hpke_key.kem is Kem.X25519 and doc.hpke_pq_key is not None
    assert doc.hpke_pq_key.kem is PQ
    assert enclave.hpke_private_key_for(doc.hpke_pq_key) is enclave.hpke_pq_key
    assert enclave.hpke_private_key_for(doc.hpke_key) is enclave.hpke_key
    assert enclave.hpke_private_key_for(HpkePrivateKey.generate(PQ).public_key) is None
    # An enclave without the PQ key keeps the former identity document.
    plain = EnclaveIdentity(enclave.signing_key, enclave.hpke_key, "sim", MRENCLAVE)
    assert b"hpke_pq_key" not in Envelope.from_bytes(plain.envelope).payload


def test_pq_and_x25519_parties_in_one_job() -> None:
    enclave = _enclave()
    identity = IdentityDocument.from_dict(json.loads(Envelope.from_bytes(enclave.envelope).payload))
    owners = {
        "pq": (SigningKey.generate(), HpkePrivateKey.generate(PQ)),
        "x": (SigningKey.generate(), HpkePrivateKey.generate()),
    }
    sealed = {
        name: _seal(identity, signing, hkey.kem, f"{name}-data", _table(200, n))
        for n, (name, (signing, hkey)) in enumerate(owners.items())
    }
    pq_manifest = DatasetManifest.verify(Envelope.from_bytes(sealed["pq"][0]))
    assert pq_manifest.sealed_to_hpke_key == identity.hpke_pq_key
    assert len(pq_manifest.wrapped_key) == 1168
    x_manifest = DatasetManifest.verify(Envelope.from_bytes(sealed["x"][0]))
    assert x_manifest.sealed_to_hpke_key == identity.hpke_key
    assert len(x_manifest.wrapped_key) == 80

    proposer = owners["pq"][0]
    terms = JobTerms(
        job_id="job-pq",
        datasets=[(f"{n}-data", Envelope.from_bytes(m).digest) for n, (m, _) in sealed.items()],
        join="horizontal",
        objective="binary:logistic",
        label="label",
        params={"tree_method": "hist", "max_depth": 2, "nthread": 1},
        num_rounds=3,
        seed=0,
        allowed_mrenclaves=[MRENCLAVE],
        outputs=["model"],
        recipients=[Recipient(n, s.verify_key, h.public_key) for n, (s, h) in owners.items()],
        expires_at=int(time.time()) + 3600,
        proposer=proposer.verify_key.hex,
    )
    envelope = terms.sign(proposer)
    approvals = [Approval("job-pq", envelope.digest).sign(s).to_bytes() for s, _ in owners.values()]
    job = jobs.accept(enclave, envelope.to_bytes(), approvals, [m for m, _ in sealed.values()])
    chunks = [(f"{name}-data", blob) for name, (_, blob) in sealed.items()]
    items = list(jobs.run(enclave, job, chunks))
    assert isinstance(items[-1], bytes)  # the signed result statement comes last
    statement = ResultStatement.verify(
        Envelope.from_bytes(items[-1]), enclave.signing_key.verify_key
    )
    (output,) = [i for i in items if isinstance(i, jobs.ReleasedOutput)]
    wrapped = statement.outputs[0].wrapped_keys
    models = set()
    for name, (signing, hkey) in owners.items():
        # Each recipient's content key is wrapped with the suite of the key in the terms.
        assert len(wrapped[signing.verify_key.hex]) == hpke.wrapped_size(hkey.kem)
        key = hpke.unwrap_key(
            wrapped[signing.verify_key.hex],
            hkey,
            hpke.result_key_info("job-pq", "model", hkey.public_key),
        )
        models.add(stream.open_stream(key, output.ciphertext, b"job-pq/model"))
    assert len(models) == 1


def test_data_sealed_to_a_pq_key_the_enclave_lacks_is_refused() -> None:
    enclave = _enclave()
    stranger = IdentityDocument(
        "sim",
        enclave.hpke_key.public_key,
        enclave.signing_key.verify_key,
        "",
        HpkePrivateKey.generate(PQ).public_key,
    )
    owner = SigningKey.generate()
    manifest, _ = _seal(stranger, owner, PQ, "pq-data", _table(50, 3))
    terms = JobTerms(
        job_id="job-x",
        datasets=[("pq-data", Envelope.from_bytes(manifest).digest)],
        join="horizontal",
        objective="binary:logistic",
        label="label",
        params={},
        num_rounds=1,
        seed=0,
        allowed_mrenclaves=[MRENCLAVE],
        outputs=["model"],
        recipients=[Recipient("o", owner.verify_key, HpkePrivateKey.generate(PQ).public_key)],
        expires_at=int(time.time()) + 3600,
        proposer=owner.verify_key.hex,
    ).sign(owner)
    approval = Approval("job-x", terms.digest).sign(owner).to_bytes()
    with pytest.raises(ConsentError, match="sealed to another enclave key"):
        jobs.accept(enclave, terms.to_bytes(), [approval], [manifest])
