"""The dashboard's audit chain check keeps the verified prefix, and still catches an operator
who edits the database: an old entry, the head, a consistent rewrite, a cut.

A real store (SQLite file, and a real PostgreSQL) is appended to through the
store's own calls; the operator's edits go through a separate connection, as
someone editing the database by hand would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from coordinator_testkit import BOTH_DATABASES

from coordinator.dashboard.audit_check import AuditChainCheck
from coordinator.store import Audit, EnrollmentRecord, SqlStore, audit_hash, now_ms
from coordinator.store.audit import GENESIS_HASH
from protocols import canonical

pytestmark = pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)


@pytest.fixture
def store(tmp_path: Path, db_url: str | None) -> Iterator[SqlStore]:
    url = db_url or f"sqlite:///{tmp_path / 'coordinator.db'}"
    opened = SqlStore(url)
    opened.url = url  # type: ignore[attr-defined]
    yield opened
    opened.close()


def _append(store: SqlStore, count: int) -> None:
    for _ in range(count):
        n = len(store.audit_entries())
        store.add_enrollment(
            EnrollmentRecord(f"party-{n}", f"{n:064x}", now_ms(), now_ms() + 60_000),
            Audit("party.enroll", f"party-{n}", {"n": n}),
        )


def _operator(store: SqlStore, sql: str, **params: object) -> None:
    """An edit through another connection, as the operator would make it by hand."""
    engine = sqlalchemy.create_engine(store.url)  # type: ignore[attr-defined]
    with engine.begin() as db:
        db.execute(sqlalchemy.text(sql), params)
    engine.dispose()


def test_only_the_entries_appended_since_are_hashed(store: SqlStore) -> None:
    check = AuditChainCheck(store)
    _append(store, 5)
    status = check.check()
    assert status.intact and status.entries == 5 and check.last_hashed == 5
    assert status.head == store.audit_entries()[-1].hash
    _append(store, 3)
    status = check.check()
    assert status.intact and status.entries == 8 and check.last_hashed == 3
    assert check.check().intact and check.last_hashed == 0


def test_an_edit_of_an_old_entry_is_detected_after_the_prefix_was_cached(
    store: SqlStore,
) -> None:
    check = AuditChainCheck(store)
    _append(store, 6)
    assert check.check().intact
    _append(store, 2)
    assert check.check().intact and check.last_hashed == 2
    _operator(store, "UPDATE audit_log SET subject = 'mallory' WHERE seq = 2")
    status = check.check()
    assert not status.intact and check.last_hashed == 8
    assert "entry 2" in status.problem and "altered" in status.problem
    assert not check.check().intact  # and on every page after
    _operator(store, "UPDATE audit_log SET subject = 'party-1' WHERE seq = 2")
    assert check.check().intact  # the edit undone: the stored rows are the verified ones


def test_a_replaced_head_hash_is_detected(store: SqlStore) -> None:
    check = AuditChainCheck(store)
    _append(store, 4)
    assert check.check().intact
    _operator(store, "UPDATE audit_log SET hash = :h WHERE seq = 4", h="ab" * 32)
    status = check.check()
    assert not status.intact and "entry 4" in status.problem


def _rewrite(store: SqlStore, seq: int, subject: str) -> None:
    """Edit one entry and recompute every hash after it, so the chain links again."""
    entries = store.audit_entries()
    prev = GENESIS_HASH if seq == 1 else entries[seq - 2].hash
    for entry in entries[seq - 1 :]:
        body = entry.body() | ({"subject": subject} if entry.seq == seq else {})
        new = audit_hash(prev, body)
        _operator(
            store,
            "UPDATE audit_log SET subject = :s, detail = :d, prev_hash = :p, hash = :h "
            "WHERE seq = :q",
            s=body["subject"],
            d=canonical.dumps(body["detail"]).decode(),
            p=prev,
            h=new,
            q=entry.seq,
        )
        prev = new


def test_a_consistent_rewrite_or_a_cut_is_reported_though_the_chain_links(
    store: SqlStore,
) -> None:
    check = AuditChainCheck(store)
    _append(store, 5)
    assert check.check().intact
    _rewrite(store, 3, "mallory")
    assert [e.subject for e in store.audit_entries()][2] == "mallory"
    status = check.check()
    assert not status.intact and "rewritten or cut" in status.problem
    _append(store, 1)
    assert not check.check().intact  # it stays said until the coordinator restarts
    assert AuditChainCheck(store).check().intact  # a fresh check cannot know

    cut = AuditChainCheck(store)
    assert cut.check().intact and cut.check().entries == 6
    _operator(store, "DELETE FROM audit_log WHERE seq > 4")
    status = cut.check()
    assert not status.intact and "1–6" in status.problem and status.entries == 4
