"""A data owner's signed refusal of job terms, with its reason (protocols/SPEC.md §3.12).

A rejection is its own payload type, not an approval with a flag: a verifier
that reads an approval can never be handed a rejection as one, or the other
way round. It names the exact terms it refuses (their digest), as an approval
names the terms it accepts.

The reason is free text written by a party, and every reader treats it as
untrusted: it is bounded and holds no control characters (so it cannot move a
terminal's cursor or forge a line of output), and every display escapes it.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from protocols import statements
from protocols.canonical import digest_field
from protocols.canonical import field as get
from protocols.documents.common import VERSION, check_id, check_version
from protocols.errors import FormatError
from protocols.keys import SigningKey
from protocols.statements import Envelope

MAX_REASON_CHARS = 500
_CONTROL = ("Cc", "Cf", "Zl", "Zp")


def check_reason(value: Any, what: str = "rejection") -> str:
    """A reason: 1–500 characters, not only spaces, on one line of plain text (no Unicode
    control characters Cc/Cf, no line or paragraph separators Zl/Zp)."""
    if not isinstance(value, str) or not value.strip():
        raise FormatError(f"{what} reason must be a non-empty text: say why")
    if len(value) > MAX_REASON_CHARS:
        raise FormatError(
            f"{what} reason has {len(value)} characters, more than {MAX_REASON_CHARS}: shorten it"
        )
    bad = sorted({f"U+{ord(c):04X}" for c in value if unicodedata.category(c) in _CONTROL})
    if bad:
        raise FormatError(
            f"{what} reason holds control characters ({', '.join(bad)}): write it on one line "
            "of plain text"
        )
    return value


@dataclass(frozen=True)
class Rejection:
    """A data owner's signature refusing the exact job terms (their payload digest)."""

    job_id: str
    terms_digest: str
    reason: str

    def __post_init__(self) -> None:
        check_id(self.job_id, "job id")
        check_reason(self.reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "job_id": self.job_id,
            "terms_digest": self.terms_digest,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Rejection:
        what = "job rejection"
        check_version(doc, what)
        unknown = sorted(set(doc) - {"version", "job_id", "terms_digest", "reason"})
        if unknown:
            raise FormatError(f"{what} has unknown fields: {', '.join(unknown)}")
        return cls(
            check_id(get(doc, "job_id", str, what), "job id"),
            digest_field(doc, "terms_digest", what),
            check_reason(get(doc, "reason", str, what)),
        )

    def sign(self, key: SigningKey) -> Envelope:
        return statements.sign(statements.REJECTION, self.to_dict(), key)

    @classmethod
    def verify(cls, envelope: Envelope) -> Rejection:
        """The rejection if ``envelope`` is one, signed by its own ``keyid`` (raises
        SignatureError or FormatError otherwise); who may reject is the caller's check."""
        return cls.from_dict(statements.verify(envelope, statements.REJECTION, None, "rejection"))
