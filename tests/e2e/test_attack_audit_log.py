"""Attacks on the audit log by the coordinator's operator, through its database file,
against real processes: a party notices a log that was rewritten, forked or cut.

The operator here is as strong as one gets: it holds the coordinator's key, so
after rewriting an entry it recomputes every later hash and signs the new
heads. What it cannot do is make the new log extend the head a party saw.
"""

from __future__ import annotations

import json
import sqlite3

from protocols import tls
from protocols.audit_head import audit_hash, sign_head
from tests.e2e.conftest import Running, detente


def rewrite_entry(running: Running, seq: int) -> None:
    """Change entry ``seq``'s subject, then re-chain and re-sign every entry after it."""
    key = tls.load_private_key(
        (running.coordinator_home / "coordinator-tls.key").read_bytes(), "coordinator key"
    )
    with sqlite3.connect(running.db) as db:
        rows = db.execute(
            "SELECT seq, at, event, subject, detail, prev_hash FROM audit_log WHERE seq >= ? "
            "ORDER BY seq",
            (seq,),
        ).fetchall()
        prev = rows[0][5]
        for number, (s, at, event, subject, detail, _) in enumerate(rows):
            if number == 0:
                subject = subject + "-rewritten"
            body = {
                "seq": s,
                "at": at,
                "event": event,
                "subject": subject,
                "detail": json.loads(detail),
            }
            new = audit_hash(prev, body)
            db.execute(
                "UPDATE audit_log SET subject = ?, prev_hash = ?, hash = ?, head_signature = ? "
                "WHERE seq = ?",
                (subject, prev, new, sign_head(key, s, new), s),
            )
            prev = new


def last_seq(running: Running) -> int:
    with sqlite3.connect(running.db) as db:
        return int(db.execute("SELECT max(seq) FROM audit_log").fetchone()[0])


def test_a_rewritten_log_is_refused_by_the_next_command(running: Running) -> None:
    home = running.party("audit-rewrite")
    assert "ok: the coordinator's audit log extends" in detente(["party", "audit"], home).stdout
    rewrite_entry(running, last_seq(running) - 1)
    done = detente(["party", "parties"], home, check=False)
    assert done.returncode != 0
    assert "audit log was forked or rewritten" in done.stderr
    assert "raise it with the consortium" in done.stderr
    again = detente(["party", "audit"], home, check=False)
    assert again.returncode != 0 and "rewritten" in again.stderr
    # The memory still holds the head the coordinator signed before: evidence kept.
    memory = json.loads((home / "audit-head.json").read_text())
    assert memory["verified"]["seq"] >= 1


def test_a_log_cut_at_the_end_is_refused(running: Running) -> None:
    home = running.party("audit-cut")
    detente(["party", "parties"], home)
    seen = json.loads((home / "audit-head.json").read_text())["seen"]["seq"]
    with sqlite3.connect(running.db) as db:
        db.execute("DELETE FROM audit_log WHERE seq > ?", (seen - 2,))
    done = detente(["party", "parties"], home, check=False)
    assert done.returncode != 0
    assert "audit log was cut at the end" in done.stderr
    assert f"entry {seen}" in done.stderr


def test_a_rewrite_hidden_under_new_entries_is_found_by_party_audit(
    running: Running,
) -> None:
    home = running.party("audit-hidden")
    detente(["party", "audit"], home)
    verified = json.loads((home / "audit-head.json").read_text())["verified"]["seq"]
    rewrite_entry(running, verified)
    running.party("audit-newcomer")  # the log grows past the rewritten entry
    # The cheap check of each command sees a newer head: it cannot tell yet.
    detente(["party", "parties"], home)
    done = detente(["party", "audit"], home, check=False)
    assert done.returncode != 0
    assert f"entry {verified}" in done.stderr and "rewritten" in done.stderr
