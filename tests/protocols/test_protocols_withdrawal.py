"""The dataset withdrawal statement (protocols/SPEC.md §3.11): what verify accepts and refuses."""

from __future__ import annotations

import dataclasses

import pytest

from protocols import statements
from protocols.documents import DatasetManifest, DatasetWithdrawal
from protocols.errors import FormatError, SignatureError
from protocols.keys import HpkePrivateKey, SigningKey
from protocols.statements import Envelope

OWNER = SigningKey.generate()
OTHER = SigningKey.generate()


def manifest(owner: SigningKey, dataset_id: str = "loans") -> Envelope:
    return DatasetManifest(
        dataset_id=dataset_id,
        name="",
        owner_key=owner.verify_key,
        schema_sha256="11" * 32,
        row_count=10,
        ciphertext_sha256="22" * 32,
        ciphertext_size=100,
        wrapped_key=b"k" * 48,
        sealed_to_mrenclave="33" * 32,
        sealed_to_hpke_key=HpkePrivateKey.generate().public_key,
    ).sign(owner)


def withdrawal(of: Envelope, signer: SigningKey, dataset_id: str = "loans") -> Envelope:
    return DatasetWithdrawal(dataset_id, of.digest, signer.verify_key, 1_800_000_000).sign(signer)


def test_the_owners_withdrawal_of_its_manifest_verifies_and_round_trips() -> None:
    signed = manifest(OWNER)
    envelope = withdrawal(signed, OWNER)
    assert envelope.payload_type == "application/vnd.detente.dataset-withdrawal.v1+json"
    doc, owned = DatasetWithdrawal.verify(Envelope.from_bytes(envelope.to_bytes()), signed)
    assert (doc.dataset_id, doc.manifest_digest, doc.owner_key) == (
        "loans",
        signed.digest,
        OWNER.verify_key,
    )
    assert owned.owner_key == OWNER.verify_key
    assert DatasetWithdrawal.from_dict(doc.to_dict()) == doc


def test_another_key_cannot_withdraw_or_sign_for_the_owner() -> None:
    signed = manifest(OWNER)
    with pytest.raises(SignatureError, match="only the owner that signed the manifest"):
        DatasetWithdrawal.verify(withdrawal(signed, OTHER), signed)
    with pytest.raises(SignatureError, match="signed by the owner key it names"):
        DatasetWithdrawal("loans", signed.digest, OWNER.verify_key, 1).sign(OTHER)
    real = withdrawal(signed, OWNER)
    forged = dataclasses.replace(
        real, signature=OTHER.sign(statements.pae(real.payload_type, real.payload))
    )
    with pytest.raises(SignatureError, match="altered or forged"):
        DatasetWithdrawal.verify(forged, signed)


def test_a_withdrawal_binds_one_manifest_of_one_data_set() -> None:
    signed, second = manifest(OWNER), manifest(OWNER, "claims")
    with pytest.raises(FormatError, match="not data set 'claims'"):
        DatasetWithdrawal.verify(withdrawal(signed, OWNER), second)
    with pytest.raises(FormatError):
        DatasetWithdrawal.verify(withdrawal(second, OWNER, dataset_id="loans"), signed)
    altered = withdrawal(signed, OWNER)
    payload = altered.payload.replace(b'"loans"', b'"loanz"')
    with pytest.raises(SignatureError):
        DatasetWithdrawal.verify(dataclasses.replace(altered, payload=payload), signed)
    with pytest.raises(FormatError, match="has type"):
        DatasetWithdrawal.verify(signed, signed)  # a manifest is not a withdrawal
