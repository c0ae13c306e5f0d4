"""The audit log's part of SqlStore: appending an entry inside a writer's transaction,
and reading the chain back.

An entry is appended in the same transaction as the change it records (see
:meth:`SqlStore._write`), linked to the entry before it
(:func:`coordinator.store.audit.next_entry`) and, with a head signer, with the
coordinator's signature over the new head.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.store.audit import Audit, AuditEntry, StoredAudit, next_entry
from coordinator.store.tables import AuditRow
from protocols import canonical
from protocols.audit_head import AuditHead

HeadSigner = Callable[[int, str], bytes]


def _audit_entry(row: AuditRow) -> AuditEntry:
    return AuditEntry(
        row.seq, row.at, row.event, row.subject, json.loads(row.detail), row.prev_hash, row.hash
    )


_STORED_AUDIT = (
    AuditRow.seq,
    AuditRow.at,
    AuditRow.event,
    AuditRow.subject,
    AuditRow.detail,
    AuditRow.prev_hash,
    AuditRow.hash,
)


class AuditRows:
    """Mixed into SqlStore: the hash-chained audit log's rows."""

    if TYPE_CHECKING:
        _head_signer: HeadSigner | None

        def _read(self) -> AbstractContextManager[Session]: ...

    def _append_audit(self, session: Session, audit: Audit, at: int) -> None:
        last = session.scalars(select(AuditRow).order_by(AuditRow.seq.desc()).limit(1)).first()
        entry = next_entry(None if last is None else _audit_entry(last), audit, at)
        session.add(
            AuditRow(
                seq=entry.seq,
                at=entry.at,
                event=entry.event,
                subject=entry.subject,
                detail=canonical.dumps(entry.detail).decode("utf-8"),
                prev_hash=entry.prev_hash,
                hash=entry.hash,
                head_signature=(
                    self._head_signer(entry.seq, entry.hash) if self._head_signer else b""
                ),
            )
        )

    def audit_entries(self, first: int = 1, last: int | None = None) -> list[AuditEntry]:
        """Entries ``first``..``last`` (inclusive; ``last`` None: to the end), by seq."""
        query = select(AuditRow).where(AuditRow.seq >= first)
        if last is not None:
            query = query.where(AuditRow.seq <= last)
        with self._read() as s:
            return [_audit_entry(r) for r in s.scalars(query.order_by(AuditRow.seq))]

    def audit_stored(self, last: int) -> list[StoredAudit]:
        """Entries up to seq ``last`` as stored (detail unparsed), by seq: one plain read."""
        query = select(*_STORED_AUDIT).where(AuditRow.seq <= last).order_by(AuditRow.seq)
        with self._read() as s:
            return [cast(StoredAudit, tuple(r)) for r in s.execute(query)]

    def audit_head(self) -> AuditHead | None:
        """The last entry's (seq, hash) with the signature stored with it; None if empty."""
        with self._read() as s:
            row = s.execute(
                select(AuditRow.seq, AuditRow.hash, AuditRow.head_signature)
                .order_by(AuditRow.seq.desc())
                .limit(1)
            ).first()
            return None if row is None else AuditHead(row[0], row[1], bytes(row[2] or b""))
