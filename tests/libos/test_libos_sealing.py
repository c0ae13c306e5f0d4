from __future__ import annotations

import hashlib
import os
import pickle
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from libos.sealing import Sealer, seal_key
from protocols.errors import FormatError, IntegrityError

SECRET = os.urandom(32)
ENCLAVE_A = hashlib.sha256(b"enclave a").hexdigest()
ENCLAVE_B = hashlib.sha256(b"enclave b").hexdigest()
SIGNER_1 = hashlib.sha256(b"signer 1").hexdigest()
SIGNER_2 = hashlib.sha256(b"signer 2").hexdigest()


def test_round_trip_and_label_binding() -> None:
    sealer = Sealer(SECRET, ENCLAVE_A, SIGNER_1)
    blob = sealer.seal(b"identity key", "identity")
    assert b"identity key" not in blob
    assert sealer.unseal(blob, "identity") == b"identity key"
    assert sealer.seal(b"x", "l") != sealer.seal(b"x", "l")  # fresh nonce
    with pytest.raises(IntegrityError, match="sealed by another enclave or altered"):
        sealer.unseal(blob, "other-label")


def test_mrenclave_policy_binds_the_exact_enclave() -> None:
    blob = Sealer(SECRET, ENCLAVE_A, SIGNER_1).seal(b"data", "l")
    with pytest.raises(IntegrityError, match="sealed by another enclave or altered"):
        Sealer(SECRET, ENCLAVE_B, SIGNER_1).unseal(blob, "l")


def test_mrsigner_policy_allows_same_signer_only() -> None:
    blob = Sealer(SECRET, ENCLAVE_A, SIGNER_1, "mrsigner").seal(b"data", "l")
    assert Sealer(SECRET, ENCLAVE_B, SIGNER_1, "mrsigner").unseal(blob, "l") == b"data"
    with pytest.raises(IntegrityError):
        Sealer(SECRET, ENCLAVE_B, SIGNER_2, "mrsigner").unseal(blob, "l")


def test_other_platform_cannot_unseal() -> None:
    blob = Sealer(SECRET, ENCLAVE_A, SIGNER_1).seal(b"data", "l")
    with pytest.raises(IntegrityError):
        Sealer(os.urandom(32), ENCLAVE_A, SIGNER_1).unseal(blob, "l")


def test_policy_mismatch_and_tampering() -> None:
    sealer = Sealer(SECRET, ENCLAVE_A, SIGNER_1)
    blob = Sealer(SECRET, ENCLAVE_A, SIGNER_1, "mrsigner").seal(b"data", "l")
    with pytest.raises(IntegrityError, match="policy='mrsigner'"):
        sealer.unseal(blob, "l")
    good = sealer.seal(b"data", "l")
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 1
        with pytest.raises(IntegrityError):
            sealer.unseal(bytes(bad), "l")
    with pytest.raises(IntegrityError):
        sealer.unseal(good[:-1], "l")


def test_key_derivation_info_and_handles() -> None:
    assert seal_key(SECRET, "mrenclave", ENCLAVE_A) != seal_key(SECRET, "mrsigner", ENCLAVE_A)
    with pytest.raises(FormatError):
        seal_key(SECRET, "anything", ENCLAVE_A)
    # The measurement comes as hex; the HKDF info holds its 32 raw bytes, so
    # blobs sealed before the hex convention open unchanged.
    info = b"detente/v1 seal mrenclave " + bytes.fromhex(ENCLAVE_A)
    by_hand = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(SECRET)
    assert seal_key(SECRET, "mrenclave", ENCLAVE_A) == by_hand
    bad_identities: list[Any] = [bytes.fromhex(ENCLAVE_A), ENCLAVE_A[:62], "zz" * 32]
    for bad in bad_identities:
        with pytest.raises(FormatError, match="sealing identity"):
            seal_key(SECRET, "mrenclave", bad)
    sealer = Sealer(SECRET, ENCLAVE_A, SIGNER_1)
    assert "secret" in repr(sealer)
    with pytest.raises(TypeError):
        pickle.dumps(sealer)
