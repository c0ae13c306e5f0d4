"""The audit log's hash chain: what an entry records, how it is hashed, and the one check.

The audit log is append-only and hash-chained: entry *n* stores
``hash = SHA-256(prev_hash ‖ canonical JSON of the entry)`` where
``prev_hash`` is entry *n-1*'s hash (32 zero bytes for the first), so editing,
dropping or reordering any row breaks every hash after it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from protocols.audit_head import GENESIS_HASH, audit_hash
from protocols.errors import IntegrityError

__all__ = [
    "GENESIS_HASH",
    "Audit",
    "AuditEntry",
    "StoredAudit",
    "audit_hash",
    "next_entry",
    "verify_audit_chain",
]

# An entry exactly as the database holds it: seq, at, event, subject, detail (canonical JSON
# text), prev_hash, hash. Compared as it is, without parsing (dashboard.audit_check).
StoredAudit = tuple[int, int, str, str, str, str, str]


@dataclass(frozen=True)
class Audit:
    """What a mutating store call records in the audit log: ids, keys, digests only."""

    event: str
    subject: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditEntry:
    """One link of the chain, as stored: what happened, and the hashes that chain it."""

    seq: int
    at: int
    event: str
    subject: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def from_stored(cls, row: StoredAudit) -> AuditEntry:
        seq, at, event, subject, detail, prev_hash, hash_hex = row
        return cls(seq, at, event, subject, json.loads(detail), prev_hash, hash_hex)

    def body(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "event": self.event,
            "subject": self.subject,
            "detail": self.detail,
        }


def next_entry(last: AuditEntry | None, audit: Audit, at: int) -> AuditEntry:
    """The entry that records ``audit`` at ``at`` after ``last`` (None: the log is empty)."""
    seq = 1 if last is None else last.seq + 1
    prev = GENESIS_HASH if last is None else last.hash
    unhashed = AuditEntry(seq, at, audit.event, audit.subject, audit.detail, prev, "")
    return replace(unhashed, hash=audit_hash(prev, unhashed.body()))


def verify_audit_chain(entries: Sequence[AuditEntry], after: tuple[int, str] | None = None) -> int:
    """Check every link of the audit chain; return the number of entries.

    ``after`` is the (seq, hash) of an entry already verified that ``entries``
    follow (None: they start the log). Raises IntegrityError naming the first
    entry that does not link or does not hash to what it records.
    """
    expected_seq, prev = (1, GENESIS_HASH) if after is None else (after[0] + 1, after[1])
    for entry in entries:
        if entry.seq != expected_seq:
            raise IntegrityError(
                f"audit log entry {expected_seq} is missing (next entry is {entry.seq})"
            )
        if entry.prev_hash != prev:
            raise IntegrityError(
                f"audit log entry {entry.seq} ({entry.event} {entry.subject}) does not "
                "link to the entry before it: the log was altered"
            )
        if audit_hash(prev, entry.body()) != entry.hash:
            raise IntegrityError(
                f"audit log entry {entry.seq} ({entry.event} {entry.subject}) does not "
                "match its hash: the log was altered"
            )
        prev = entry.hash
        expected_seq += 1
    return len(entries)
