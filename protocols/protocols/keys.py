"""Key handles: Ed25519 for signatures, X25519 or ML-KEM-768+X25519 for HPKE (protocols/SPEC.md §4).

Private key handles refuse to print, compare or pickle, so a secret cannot
leak into a log line or a pickled object by accident. Public keys are values
identified by their lowercase hex encoding.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519

from protocols.canonical import strict_hex
from protocols.durable import write_atomic
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
            raw = strict_hex(text, "key")
        except FormatError:
            raise FormatError(f"not a hex Ed25519 public key: {str(text)[:80]!r}") from None
        return cls(raw)

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


class Kem(enum.Enum):
    """The HPKE KEMs Detente uses, valued by their RFC 9180 §7.1 registry identifier."""

    # DHKEM(X25519, HKDF-SHA256), RFC 9180 §7.1: the default.
    X25519 = 0x0020
    # MLKEM768-X25519 (X-Wing), draft-ietf-hpke-pq / draft-irtf-cfrg-concrete-hybrid-kems
    # §4.2; IANA HPKE KEM id 0x647A. Post-quantum: secure while either ML-KEM-768 or
    # X25519 holds, so a key wrapped today resists harvest-now-decrypt-later.
    MLKEM768_X25519 = 0x647A

    @property
    def label(self) -> str:
        return "x25519" if self is Kem.X25519 else "mlkem768x25519"

    @property
    def tag(self) -> bytes:
        """The two-byte prefix of this KEM's key encodings (none for legacy X25519)."""
        return b"" if self is Kem.X25519 else self.value.to_bytes(2, "big")

    @property
    def public_size(self) -> int:
        """Length of the encoded public key, tag included."""
        return 32 if self is Kem.X25519 else 2 + _MLKEM768_PUBLIC + 32

    @property
    def private_size(self) -> int:
        """Length of the encoded private key, tag included."""
        return 32 if self is Kem.X25519 else 2 + _MLKEM768_SEED + 32


# FIPS 203 §8 (ML-KEM-768): encapsulation key 1184 bytes; the private key is kept as
# its 64-byte seed d ‖ z (FIPS 203 §7.1), the form cryptography imports and exports.
_MLKEM768_PUBLIC = 1184
_MLKEM768_SEED = 64
_PQ_TAG = Kem.MLKEM768_X25519.tag


def _kem_of(encoded: bytes, what: str, pq_size: int) -> Kem:
    """The KEM of an encoded HPKE key: 32 bytes is X25519, else the 2-byte KEM id says.

    ``pq_size`` is the length an ML-KEM-768+X25519 ``what`` (public or private key)
    must have; the two forms can never be confused, as 32 ≠ ``pq_size``.
    """
    if len(encoded) == 32:
        return Kem.X25519
    if encoded[:2] == _PQ_TAG and len(encoded) == pq_size:
        return Kem.MLKEM768_X25519
    raise FormatError(
        f"an HPKE {what} is 32 bytes (X25519) or {pq_size} bytes starting with KEM id "
        f"0x{Kem.MLKEM768_X25519.value:04x} (ML-KEM-768+X25519), got {len(encoded)} bytes"
    )


@dataclass(frozen=True)
class HpkePublicKey:
    """A recipient's HPKE public key; its encoding names its KEM (see protocols/SPEC.md §4.1).

    ``raw`` is the self-describing encoding: a bare 32-byte X25519 key (the
    original form, so existing keys and documents keep their bytes), or
    ``0x647a ‖ ML-KEM-768 encapsulation key (1184) ‖ X25519 key (32)``.
    """

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes):
            raise FormatError("an HPKE public key must be bytes")
        # Parse now, so a key that cryptography would refuse never becomes a value.
        self.to_cryptography()

    @classmethod
    def from_hex(cls, text: str) -> HpkePublicKey:
        try:
            raw = strict_hex(text, "key")
        except FormatError:
            raise FormatError(f"not a hex HPKE public key: {str(text)[:80]!r}") from None
        return cls(raw)

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @property
    def kem(self) -> Kem:
        return _kem_of(self.raw, "public key", Kem.MLKEM768_X25519.public_size)

    def to_cryptography(self) -> x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey:
        kem = self.kem
        try:
            if kem is Kem.X25519:
                return x25519.X25519PublicKey.from_public_bytes(self.raw)
            body = self.raw[2:]
            return hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(body[:_MLKEM768_PUBLIC]),
                x25519.X25519PublicKey.from_public_bytes(body[_MLKEM768_PUBLIC:]),
            )
        except ValueError as exc:
            raise FormatError(f"not a valid {kem.label} HPKE public key: {exc}") from None


class HpkePrivateKey(_Secret):
    """A recipient's HPKE private key: X25519, or ML-KEM-768 + X25519 when ``mlkem_key`` is set."""

    def __init__(
        self, key: x25519.X25519PrivateKey, mlkem_key: mlkem.MLKEM768PrivateKey | None = None
    ) -> None:
        self._key = key
        self._mlkem = mlkem_key

    @classmethod
    def generate(cls, kem: Kem = Kem.X25519) -> HpkePrivateKey:
        if kem is Kem.X25519:
            return cls(x25519.X25519PrivateKey.generate())
        return cls(x25519.X25519PrivateKey.generate(), mlkem.MLKEM768PrivateKey.generate())

    @classmethod
    def from_raw(cls, raw: bytes) -> HpkePrivateKey:
        """Load :meth:`private_raw` output; a bare 32-byte key is X25519 (keys on disk)."""
        if not isinstance(raw, bytes):
            raise FormatError("an HPKE private key must be bytes")
        kem = _kem_of(raw, "private key", Kem.MLKEM768_X25519.private_size)
        if kem is Kem.X25519:
            return cls(x25519.X25519PrivateKey.from_private_bytes(raw))
        seed, x_raw = raw[2 : 2 + _MLKEM768_SEED], raw[2 + _MLKEM768_SEED :]
        try:
            pq = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        except ValueError as exc:
            raise FormatError(f"not a valid ML-KEM-768 seed: {exc}") from None
        return cls(x25519.X25519PrivateKey.from_private_bytes(x_raw), pq)

    @property
    def kem(self) -> Kem:
        return Kem.X25519 if self._mlkem is None else Kem.MLKEM768_X25519

    def private_raw(self) -> bytes:
        """X25519: the 32-byte key. PQ: ``0x647a ‖ ML-KEM-768 seed (64) ‖ X25519 key (32)``."""
        x_raw = self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        if self._mlkem is None:
            return x_raw
        return _PQ_TAG + self._mlkem.private_bytes_raw() + x_raw

    @property
    def public_key(self) -> HpkePublicKey:
        x_pub = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        if self._mlkem is None:
            return HpkePublicKey(x_pub)
        return HpkePublicKey(_PQ_TAG + self._mlkem.public_key().public_bytes_raw() + x_pub)

    def to_cryptography(self) -> x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey:
        if self._mlkem is None:
            return self._key
        return hpke.MLKEM768X25519PrivateKey(self._mlkem, self._key)


def write_secret_file(path: Path, data: bytes) -> None:
    """Write key material with mode 0600, atomically, never readable by others."""
    write_atomic(path, data, mode=0o600)
