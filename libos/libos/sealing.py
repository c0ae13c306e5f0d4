"""Sealing: encrypt data so only the same enclave (or signer) on the same platform opens it.

Keys come from the platform's sealing secret with HKDF-SHA256 (RFC 5869),
info = ``b"detente/v1 seal " + policy + b" " + identity``, where the identity is
the 32 raw bytes of MRENCLAVE under the ``mrenclave`` policy (default: only
this exact image) or of MRSIGNER under the ``mrsigner`` policy (any image by
the same signer, e.g. a newer release). This mirrors SGX's EGETKEY key
policies. Callers pass MRENCLAVE and MRSIGNER as hex, like every Detente API.

Blob layout::

    magic "DSEAL" (5 bytes) | version 1 (1) | policy (1: 1 mrenclave, 2 mrsigner)
    | nonce (12) | AES-256-GCM ciphertext and tag

The header and the caller's label are the associated data, so a blob cannot be
moved to another label or re-tagged with another policy.
"""

from __future__ import annotations

import os
from typing import Literal, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocols import canonical
from protocols.errors import FormatError, IntegrityError

Policy = Literal["mrenclave", "mrsigner"]
POLICIES: dict[str, int] = {"mrenclave": 1, "mrsigner": 2}
MAGIC = b"DSEAL"
VERSION = 1
NONCE_SIZE = 12
HEADER_SIZE = len(MAGIC) + 2
_INFO_PREFIX = b"detente/v1 seal "


def _label_bytes(label: str | bytes) -> bytes:
    return label.encode("utf-8") if isinstance(label, str) else bytes(label)


def seal_key(secret: bytes, policy: str, identity: str) -> bytes:
    """The 256-bit AES key for ``policy`` and ``identity`` (MRENCLAVE or MRSIGNER, hex)."""
    if policy not in POLICIES:
        raise FormatError(f"unknown sealing policy {policy!r}; use 'mrenclave' or 'mrsigner'")
    raw = canonical.unhex(identity, "a sealing identity (MRENCLAVE or MRSIGNER)", 32)
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=_INFO_PREFIX + policy.encode("ascii") + b" " + raw,
    ).derive(secret)


class Sealer:
    """Seals and unseals for one enclave identity under one policy. Holds a key: never printed."""

    def __init__(
        self, secret: bytes, mrenclave: str, mrsigner: str, policy: str = "mrenclave"
    ) -> None:
        identity = mrenclave if policy == "mrenclave" else mrsigner
        self._key = AESGCM(seal_key(secret, policy, identity))
        self.policy = policy
        self._header = MAGIC + bytes([VERSION, POLICIES[policy]])

    def __repr__(self) -> str:
        return f"<Sealer policy={self.policy} (secret, not shown)>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("Sealer holds a sealing key and cannot be pickled")

    def seal(self, data: bytes, label: str | bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        aad = self._header + _label_bytes(label)
        return self._header + nonce + self._key.encrypt(nonce, bytes(data), aad)

    def unseal(self, blob: bytes, label: str | bytes) -> bytes:
        blob = bytes(blob)
        if len(blob) < HEADER_SIZE + NONCE_SIZE + 16 or not blob.startswith(MAGIC):
            raise IntegrityError("not a sealed blob (bad header or too short); it was altered")
        if blob[len(MAGIC)] != VERSION:
            raise IntegrityError(f"sealed blob version {blob[len(MAGIC)]} is not {VERSION}")
        if blob[:HEADER_SIZE] != self._header:
            names = {v: k for k, v in POLICIES.items()}
            other = names.get(blob[len(MAGIC) + 1], "unknown")
            raise IntegrityError(
                f"blob was sealed under the {other!r} policy, not {self.policy!r}: "
                f"unseal it with policy={other!r}"
            )
        nonce = blob[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE]
        try:
            return self._key.decrypt(
                nonce, blob[HEADER_SIZE + NONCE_SIZE :], self._header + _label_bytes(label)
            )
        except InvalidTag:
            raise IntegrityError(
                f"cannot unseal under the {self.policy} policy: the blob was sealed by another "
                "enclave or altered (or under another label, or on another platform)"
            ) from None
