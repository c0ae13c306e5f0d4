"""Key wrapping with HPKE, RFC 9180 base mode (DESIGN.md §4).

Suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM. The ``info``
string binds the wrapped key to its purpose and context (RFC 9180 §5.1), so a
key wrapped for one data set or job cannot be replayed for another.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hpke

from protocols.errors import IntegrityError
from protocols.keys import HpkePrivateKey, HpkePublicKey

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_PREFIX = b"detente/v1 "


def data_key_info(dataset_id: str, recipient: HpkePublicKey) -> bytes:
    """``info`` for a data set's key wrapped to an enclave."""
    return _PREFIX + b"data-key " + dataset_id.encode() + b" " + recipient.raw


def result_key_info(job_id: str, output: str, recipient: HpkePublicKey) -> bytes:
    """``info`` for a released output's content key wrapped to a recipient."""
    return (
        _PREFIX + b"result-key " + job_id.encode() + b" " + output.encode() + b" " + recipient.raw
    )


def wrap_key(key: bytes, recipient: HpkePublicKey, info: bytes) -> bytes:
    """Encrypt ``key`` to ``recipient``; returns enc ‖ ciphertext."""
    return bytes(_SUITE.encrypt(key, recipient.to_cryptography(), info=info))


def unwrap_key(wrapped: bytes, private_key: HpkePrivateKey, info: bytes) -> bytes:
    """Recover a wrapped key, or raise IntegrityError (wrong key, wrong context, tampered)."""
    try:
        return bytes(_SUITE.decrypt(wrapped, private_key.to_cryptography(), info=info))
    except Exception:
        raise IntegrityError(
            "cannot unwrap the key: it was wrapped to another recipient or context, "
            "or it was altered"
        ) from None
