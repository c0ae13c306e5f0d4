"""HPKE key wrapping (protocols/hpke.py): round trip and context binding."""

from __future__ import annotations

import os

import pytest

from protocols import hpke
from protocols.errors import IntegrityError
from protocols.keys import HpkePrivateKey


@pytest.fixture
def enclave() -> HpkePrivateKey:
    return HpkePrivateKey.generate()


def test_round_trip(enclave: HpkePrivateKey) -> None:
    key = os.urandom(32)
    info = hpke.data_key_info("ds-1", enclave.public_key)
    wrapped = hpke.wrap_key(key, enclave.public_key, info)
    # enc (32-byte X25519 public key) ‖ AES-256-GCM ciphertext (32 + 16-byte tag)
    assert len(wrapped) == 32 + 32 + 16
    assert hpke.unwrap_key(wrapped, enclave, info) == key


def test_wrapping_is_randomised(enclave: HpkePrivateKey) -> None:
    key = os.urandom(32)
    info = hpke.data_key_info("ds-1", enclave.public_key)
    assert hpke.wrap_key(key, enclave.public_key, info) != hpke.wrap_key(
        key, enclave.public_key, info
    )


def test_result_key_round_trip(enclave: HpkePrivateKey) -> None:
    key = os.urandom(32)
    info = hpke.result_key_info("job-1", "model", enclave.public_key)
    assert hpke.unwrap_key(hpke.wrap_key(key, enclave.public_key, info), enclave, info) == key


def test_info_strings_are_exact(enclave: HpkePrivateKey) -> None:
    pk = enclave.public_key
    assert hpke.data_key_info("ds-1", pk) == b"detente/v1 data-key ds-1 " + pk.raw
    assert (
        hpke.result_key_info("job-1", "model", pk) == b"detente/v1 result-key job-1 model " + pk.raw
    )


def test_wrong_private_key(enclave: HpkePrivateKey) -> None:
    info = hpke.data_key_info("ds-1", enclave.public_key)
    wrapped = hpke.wrap_key(os.urandom(32), enclave.public_key, info)
    with pytest.raises(IntegrityError, match="wrapped to another recipient or context"):
        hpke.unwrap_key(wrapped, HpkePrivateKey.generate(), info)


def test_wrong_dataset_id(enclave: HpkePrivateKey) -> None:
    wrapped = hpke.wrap_key(
        os.urandom(32), enclave.public_key, hpke.data_key_info("ds-1", enclave.public_key)
    )
    with pytest.raises(IntegrityError, match="another recipient or context"):
        hpke.unwrap_key(wrapped, enclave, hpke.data_key_info("ds-2", enclave.public_key))


def test_wrong_recipient_in_info(enclave: HpkePrivateKey) -> None:
    """The key was wrapped to this enclave's key, but claimed for another recipient."""
    other = HpkePrivateKey.generate().public_key
    wrapped = hpke.wrap_key(
        os.urandom(32), enclave.public_key, hpke.data_key_info("ds-1", enclave.public_key)
    )
    with pytest.raises(IntegrityError, match="another recipient or context"):
        hpke.unwrap_key(wrapped, enclave, hpke.data_key_info("ds-1", other))


def test_data_key_cannot_be_replayed_as_result_key(enclave: HpkePrivateKey) -> None:
    wrapped = hpke.wrap_key(
        os.urandom(32), enclave.public_key, hpke.data_key_info("x", enclave.public_key)
    )
    with pytest.raises(IntegrityError):
        hpke.unwrap_key(wrapped, enclave, hpke.result_key_info("x", "model", enclave.public_key))


def test_wrong_output_name(enclave: HpkePrivateKey) -> None:
    info = hpke.result_key_info("job-1", "model", enclave.public_key)
    wrapped = hpke.wrap_key(os.urandom(32), enclave.public_key, info)
    with pytest.raises(IntegrityError):
        hpke.unwrap_key(
            wrapped, enclave, hpke.result_key_info("job-1", "metrics", enclave.public_key)
        )


def test_every_flipped_byte_is_rejected(enclave: HpkePrivateKey) -> None:
    info = hpke.data_key_info("ds-1", enclave.public_key)
    wrapped = hpke.wrap_key(os.urandom(32), enclave.public_key, info)
    for i in range(len(wrapped)):
        tampered = bytearray(wrapped)
        tampered[i] ^= 0x01
        with pytest.raises(IntegrityError, match="altered"):
            hpke.unwrap_key(bytes(tampered), enclave, info)


@pytest.mark.parametrize("length", [0, 1, 31, 32, 47, 79])
def test_truncated_wrapping(enclave: HpkePrivateKey, length: int) -> None:
    info = hpke.data_key_info("ds-1", enclave.public_key)
    wrapped = hpke.wrap_key(os.urandom(32), enclave.public_key, info)
    with pytest.raises(IntegrityError):
        hpke.unwrap_key(wrapped[:length], enclave, info)
