"""The coordinator's signed audit head: the newest entry of its hash-chained audit log.

On every append the coordinator signs ``(seq, hash)`` of the new last entry
with its TLS key (ECDSA P-256, SHA-256), the key whose certificate every party
pinned at `detente party init`; every successful reply carries the current
head in the trailing metadata ``detente-audit-head`` as ``SEQ:HASH:SIGNATURE``
(decimal, hex, base64). A party keeps the last head it verified and refuses
one that does not extend it (docs/threat-model.md, audit log). The signature
makes a head the coordinator showed evidence against it: two heads it signed
that do not lie on one chain prove a fork.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from protocols import canonical
from protocols.errors import FormatError, SignatureError

TRAILER = "detente-audit-head"
# prev_hash of the first entry; also the hash of the empty log's head (seq 0).
GENESIS_HASH = "00" * 32
# Domain separation: these bytes are signed for nothing else.
_PREFIX = b"detente audit head v1\n"
_HASH = re.compile(r"[0-9a-f]{64}")


def audit_hash(prev_hash: str, body: dict[str, Any]) -> str:
    """An entry's hash: SHA-256(prev_hash ‖ canonical JSON of its body), hex.

    ``body`` is ``{"seq", "at", "event", "subject", "detail"}``; the coordinator
    computes it on append and a party recomputes it to check the chain.
    """
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical.dumps(body)).hexdigest()


def head_message(seq: int, hash_hex: str) -> bytes:
    """The bytes the coordinator signs for the head ``(seq, hash_hex)``."""
    if seq < 0 or not _HASH.fullmatch(hash_hex):
        raise FormatError("an audit head is a sequence number ≥ 0 and a SHA-256 in lowercase hex")
    return _PREFIX + f"{seq}\n{hash_hex}\n".encode()


def sign_head(key: ec.EllipticCurvePrivateKey, seq: int, hash_hex: str) -> bytes:
    return key.sign(head_message(seq, hash_hex), ec.ECDSA(hashes.SHA256()))


@dataclass(frozen=True)
class AuditHead:
    """A head as received: verify it (:meth:`verify`) before trusting it."""

    seq: int
    hash: str
    signature: bytes

    def to_trailer(self) -> str:
        return f"{self.seq}:{self.hash}:{base64.b64encode(self.signature).decode()}"

    @classmethod
    def from_trailer(cls, value: str) -> AuditHead:
        parts = value.split(":")
        try:
            if len(parts) != 3 or not parts[0].isdigit() or not _HASH.fullmatch(parts[1]):
                raise ValueError
            return cls(int(parts[0]), parts[1], base64.b64decode(parts[2], validate=True))
        except (ValueError, binascii.Error):
            raise FormatError(
                f"the coordinator's {TRAILER} metadata is malformed ({value[:80]!r})"
            ) from None

    def verify(self, key: ec.EllipticCurvePublicKey) -> None:
        """Raise SignatureError unless the coordinator's key signed this head."""
        try:
            key.verify(self.signature, head_message(self.seq, self.hash), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise SignatureError(
                f"the coordinator's audit head {self.seq} is not signed by the coordinator's "
                "pinned key: do not trust this coordinator's replies; tell its operator"
            ) from None

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "signature": base64.b64encode(self.signature).decode(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuditHead:
        return cls(int(data["seq"]), str(data["hash"]), base64.b64decode(data["signature"]))


def head_from_metadata(metadata: Iterable[Any] | None) -> AuditHead | None:
    """The head in a reply's trailing metadata, or None if it carries none."""
    for key, value in metadata or ():
        if key == TRAILER:
            return AuditHead.from_trailer(value if isinstance(value, str) else value.decode())
    return None
