"""Key wrapping with HPKE, RFC 9180 base mode (protocols/SPEC.md §4).

Two suites, chosen by the recipient's key (its encoding names its KEM,
protocols/SPEC.md §4.1):

* DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM — the default;
* MLKEM768-X25519 (KEM id 0x647A), HKDF-SHA256, AES-256-GCM — the
  post-quantum option: a wrapped key stays secret unless both ML-KEM-768 and
  X25519 fall, so ciphertext recorded today cannot be opened by a future
  quantum computer (harvest-now-decrypt-later).

The ``info`` string binds the wrapped key to its purpose and context
(RFC 9180 §5.1), so a key wrapped for one data set or job cannot be replayed
for another. Encapsulation is randomised by cryptography and takes no seed,
so wrapping has no knob for its randomness.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hpke

from protocols.errors import IntegrityError
from protocols.keys import HpkePrivateKey, HpkePublicKey, Kem

_SUITES = {
    Kem.X25519: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
    Kem.MLKEM768_X25519: hpke.Suite(
        hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM
    ),
}
# Length of the encapsulated key that starts every wrapping (RFC 9180 §4 Nenc).
ENC_SIZE = {Kem.X25519: 32, Kem.MLKEM768_X25519: 1120}
TAG_SIZE = 16
_PREFIX = b"detente/v1 "


def data_key_info(dataset_id: str, recipient: HpkePublicKey) -> bytes:
    """``info`` for a data set's key wrapped to an enclave (ends with the recipient's encoding)."""
    return _PREFIX + b"data-key " + dataset_id.encode() + b" " + recipient.raw


def result_key_info(job_id: str, output: str, recipient: HpkePublicKey) -> bytes:
    """``info`` for a released output's content key wrapped to a recipient."""
    return (
        _PREFIX + b"result-key " + job_id.encode() + b" " + output.encode() + b" " + recipient.raw
    )


def query_key_info(model_id: str, query_id: str, recipient: HpkePublicKey) -> bytes:
    """``info`` for a query's rows key wrapped to the enclave."""
    return (
        _PREFIX
        + b"query-key "
        + model_id.encode()
        + b" "
        + query_id.encode()
        + b" "
        + recipient.raw
    )


def answer_key_info(model_id: str, query_id: str, recipient: HpkePublicKey) -> bytes:
    """``info`` for a query's answer key wrapped to the querier."""
    return (
        _PREFIX
        + b"answer-key "
        + model_id.encode()
        + b" "
        + query_id.encode()
        + b" "
        + recipient.raw
    )


def wrapped_size(kem: Kem, key_size: int = 32) -> int:
    """Bytes of a wrapping of a ``key_size``-byte key: enc ‖ ciphertext ‖ tag."""
    return ENC_SIZE[kem] + key_size + TAG_SIZE


def wrap_key(key: bytes, recipient: HpkePublicKey, info: bytes) -> bytes:
    """Encrypt ``key`` to ``recipient`` with the suite of its KEM; returns enc ‖ ciphertext."""
    return bytes(_SUITES[recipient.kem].encrypt(key, recipient.to_cryptography(), info=info))


def unwrap_key(wrapped: bytes, private_key: HpkePrivateKey, info: bytes) -> bytes:
    """Recover a wrapped key, or raise IntegrityError (wrong key, wrong context, tampered)."""
    try:
        return bytes(
            _SUITES[private_key.kem].decrypt(wrapped, private_key.to_cryptography(), info=info)
        )
    except Exception:
        raise IntegrityError(
            "cannot unwrap the key: it was wrapped to another recipient or context, "
            "or it was altered"
        ) from None
