"""The audit chain's status for the dashboard, without re-hashing the whole log on every page.

Every page shows whether the chain is intact, and pages refresh every few
seconds. Hashing every entry again (canonical JSON, SHA-256) each time costs
more the longer the log grows, so the check keeps the verified prefix: the
entries up to the last head it verified, as a SHA-256 over their stored rows
(read as stored, no parsing). Each check reads the stored rows once; if the
prefix is byte for byte the one verified, only the entries appended since
are verified, linking to the verified head. If anything in the prefix
changed — an entry edited, dropped or re-hashed, the head replaced, the log
cut — the whole chain is verified again. The operator can edit its
database at any time, so nothing but the stored bytes is trusted.

A prefix that changed and still verifies was rewritten consistently (every
hash recomputed) or cut: the chain alone cannot show it, but this check
verified the earlier version, so it says so until the coordinator restarts.
Parties catch such rewrites with the signed head they keep
(`detente party audit`).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

from coordinator.store import AuditEntry, CoordinatorStore, verify_audit_chain
from coordinator.store.audit import StoredAudit
from protocols.errors import IntegrityError


@dataclass(frozen=True)
class ChainStatus:
    intact: bool
    problem: str
    entries: int
    last_seq: int  # seq of the last stored entry (0: none)
    head: str  # its hash ("" if none)


@dataclass(frozen=True)
class _Verified:
    seq: int
    hash: str
    fingerprint: str  # SHA-256 over the stored rows 1..seq
    at: float


class AuditChainCheck:
    """Verifies the store's audit chain, caching the verified prefix (see the module)."""

    def __init__(self, store: CoordinatorStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._verified: _Verified | None = None
        self._rewritten = ""
        # Entries hashed by the last check: what the cache saves, for tests and curiosity.
        self.last_hashed = 0

    def check(self) -> ChainStatus:
        with self._lock:  # one check at a time: concurrent page loads share the result
            return self._check()

    def _check(self) -> ChainStatus:
        head = self._store.audit_head()
        rows = self._store.audit_stored(head.seq) if head is not None else []
        known = self._verified
        digest = hashlib.sha256()
        start = 0
        if known is not None and len(rows) >= known.seq:
            for row in rows[: known.seq]:
                digest.update(_row_bytes(row))
            if rows[known.seq - 1][0] == known.seq and digest.hexdigest() == known.fingerprint:
                start = known.seq
        if start == 0:
            digest = hashlib.sha256()
        entries = [AuditEntry.from_stored(r) for r in rows[start:]]
        self.last_hashed = len(entries)
        try:
            verify_audit_chain(entries, (known.seq, known.hash) if start and known else None)
        except IntegrityError as exc:
            return self._status(rows, str(exc))
        if known is not None and start == 0:
            self._rewritten = (
                f"audit log entries 1–{known.seq}, verified by this dashboard at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(known.at))}, have changed "
                "since, and the chain still links: the log was rewritten or cut. Parties that "
                "kept a later head see it with `detente party audit`"
            )
        for row in rows[start:]:
            digest.update(_row_bytes(row))
        if rows:
            self._verified = _Verified(rows[-1][0], rows[-1][6], digest.hexdigest(), time.time())
        else:
            self._verified = None
        return self._status(rows, self._rewritten)

    @staticmethod
    def _status(rows: list[StoredAudit], problem: str) -> ChainStatus:
        last = rows[-1] if rows else None
        return ChainStatus(
            intact=not problem,
            problem=problem,
            entries=len(rows),
            last_seq=last[0] if last else 0,
            head=last[6] if last else "",
        )


def _row_bytes(row: StoredAudit) -> bytes:
    # repr of a tuple of ints and strings: unambiguous (quoted, escaped), and made in C.
    return repr(row).encode("utf-8", "surrogatepass")
