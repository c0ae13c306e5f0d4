"""Key handles: Ed25519 for signatures, X25519 for HPKE (DESIGN.md §4).

Private key handles refuse to print, compare or pickle, so a secret cannot
leak into a log line or a pickled object by accident. Public keys are values
identified by their lowercase hex encoding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from protocols.errors import FormatError, SignatureError


class _Secret:
    """Mixin for handles that hold private key material."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} (secret, not shown)>"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds a secret and cannot be pickled")


@dataclass(frozen=True)
class VerifyKey:
    """An Ed25519 public key: the identity of a party or an enclave."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise FormatError(f"an Ed25519 public key is 32 bytes, got {len(self.raw)}")

    @classmethod
    def from_hex(cls, text: str) -> VerifyKey:
        try:
            return cls(bytes.fromhex(text))
        except ValueError:
            raise FormatError(f"not a hex Ed25519 public key: {text[:80]!r}") from None

    @property
    def hex(self) -> str:
        return self.raw.hex()

    def verify(self, signature: bytes, message: bytes) -> None:
        """Raise SignatureError unless ``signature`` is this key's over ``message``."""
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            raise SignatureError(f"signature does not verify under key {self.hex[:16]}…") from None


class SigningKey(_Secret):
    """An Ed25519 private key."""

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_raw(cls, raw: bytes) -> SigningKey:
        if len(raw) != 32:
            raise FormatError("an Ed25519 private key is 32 bytes")
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(raw))

    def private_raw(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def verify_key(self) -> VerifyKey:
        return VerifyKey(
            self._key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


@dataclass(frozen=True)
class HpkePublicKey:
    """A recipient's HPKE public key (KEM X25519, RFC 9180 §7.1)."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise FormatError(f"an X25519 public key is 32 bytes, got {len(self.raw)}")

    @classmethod
    def from_hex(cls, text: str) -> HpkePublicKey:
        try:
            return cls(bytes.fromhex(text))
        except ValueError:
            raise FormatError(f"not a hex X25519 public key: {text[:80]!r}") from None

    @property
    def hex(self) -> str:
        return self.raw.hex()

    def to_cryptography(self) -> x25519.X25519PublicKey:
        return x25519.X25519PublicKey.from_public_bytes(self.raw)


class HpkePrivateKey(_Secret):
    """A recipient's HPKE private key."""

    def __init__(self, key: x25519.X25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> HpkePrivateKey:
        return cls(x25519.X25519PrivateKey.generate())

    @classmethod
    def from_raw(cls, raw: bytes) -> HpkePrivateKey:
        if len(raw) != 32:
            raise FormatError("an X25519 private key is 32 bytes")
        return cls(x25519.X25519PrivateKey.from_private_bytes(raw))

    def private_raw(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def public_key(self) -> HpkePublicKey:
        return HpkePublicKey(
            self._key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    def to_cryptography(self) -> x25519.X25519PrivateKey:
        return self._key


def write_secret_file(path: Path, data: bytes) -> None:
    """Write key material with mode 0600, atomically, never readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
