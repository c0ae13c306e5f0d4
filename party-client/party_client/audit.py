"""The party's check of the coordinator's audit log: the signed head it saw last.

Every reply of the coordinator carries its signed audit head (``seq``, ``hash``
of the last entry; :mod:`protocols.audit_head`). The party keeps, in its home
(``audit-head.json``), the last head it *verified* (the chain from it to the
newest was checked entry by entry) and the newest head it has *seen*.

Each command checks a new head cheaply (:meth:`AuditWatch.saw`): it must be
signed by the pinned coordinator key, and no older than, nor different at the
same seq from, the verified head or the newest seen one. A head older than the
newest seen is confirmed by fetching that one entry (a reply computed before
another may arrive after it); if the log no longer holds it, it was cut or
rewritten. ``detente party audit`` (:func:`verify_extension`) fetches the
entries from the verified head to the newest and checks every link, so a log
rewritten anywhere after the verified head, or forked, is found.

Nothing here trusts the coordinator: a refusal names what was found and what
to do, and the memory is not advanced past what failed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from protocols import tls
from protocols.audit_head import GENESIS_HASH, AuditHead, audit_hash
from protocols.durable import write_atomic
from protocols.errors import FormatError, IntegrityError

if TYPE_CHECKING:
    from party_client.home import PartyHome

MEMORY_NAME = "audit-head.json"
# Pages of ListAuditEntries one audit reads at most (1000 entries each).
MAX_PAGES = 100_000

_WHAT_TO_DO = (
    "keep the replies you have (your home's audit-head.json holds the head the coordinator "
    "signed), stop relying on this coordinator's records, and raise it with the consortium "
    "and the coordinator's operator"
)


class AuditLogRewritten(IntegrityError):
    """The coordinator's audit log no longer extends the head this party saw: it was cut,
    rewritten or forked."""


@dataclass(frozen=True)
class RemoteAuditEntry:
    """An audit entry as the coordinator sent it (checked by :func:`verify_extension`)."""

    seq: int
    at: int
    event: str
    subject: str
    detail: str  # canonical JSON
    prev_hash: str
    hash: str

    def computed_hash(self) -> str:
        body = {
            "seq": self.seq,
            "at": self.at,
            "event": self.event,
            "subject": self.subject,
            "detail": json.loads(self.detail),
        }
        return audit_hash(self.prev_hash, body)


class AuditSource(Protocol):
    """What the check needs from the coordinator (party_client.remote.Coordinator)."""

    def audit_entries(self, first: int, last: int = 0) -> list[RemoteAuditEntry]: ...


@dataclass
class AuditMemory:
    """The heads this party verified and saw, for one pinned coordinator certificate
    (a new pin starts afresh: it is another coordinator)."""

    path: Path
    certificate_sha256: str

    def load(self) -> tuple[AuditHead | None, AuditHead | None]:
        """(verified, newest seen); (None, None) if nothing was kept for this coordinator."""
        if not self.path.exists():
            return None, None
        data = json.loads(self.path.read_text())
        if data.get("coordinator_certificate_sha256") != self.certificate_sha256:
            return None, None

        def head(key: str) -> AuditHead | None:
            return AuditHead.from_json(data[key]) if data.get(key) else None

        return head("verified"), head("seen")

    def save(self, verified: AuditHead | None, seen: AuditHead | None) -> None:
        data: dict[str, Any] = {
            "coordinator_certificate_sha256": self.certificate_sha256,
            "verified": verified.as_json() if verified else None,
            "seen": seen.as_json() if seen else None,
        }
        write_atomic(self.path, (json.dumps(data, indent=2) + "\n").encode())


def memory_for(home_root: Path, certificate: x509.Certificate) -> AuditMemory:
    return AuditMemory(home_root / MEMORY_NAME, tls.certificate_sha256(certificate))


def _forked(mine: AuditHead, theirs: AuditHead | str, how: str) -> AuditLogRewritten:
    shown = theirs.hash if isinstance(theirs, AuditHead) else theirs
    return AuditLogRewritten(
        f"the coordinator's audit log was {how}: entry {mine.seq} was {mine.hash[:16]}… when "
        f"this party saw it (signed by the coordinator), now {shown[:16]}…; {_WHAT_TO_DO}"
    )


def _cut(mine: AuditHead, now: int) -> AuditLogRewritten:
    return AuditLogRewritten(
        f"the coordinator's audit log was cut at the end: this party saw it signed at entry "
        f"{mine.seq}, it now ends at entry {now}; {_WHAT_TO_DO}"
    )


class AuditWatch:
    """Checks each head the coordinator returns against this party's memory."""

    def __init__(
        self,
        memory: AuditMemory,
        certificate: x509.Certificate,
        fetch: Callable[[int], RemoteAuditEntry | None],
    ) -> None:
        """``certificate``: the coordinator's pinned one; its key signs the heads."""
        self.memory = memory
        key = certificate.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise FormatError("the pinned coordinator certificate has no ECDSA key")
        self._key = key
        self._fetch = fetch  # one entry by seq, None if the log has no such entry

    def saw(self, head: AuditHead) -> None:
        """Raise AuditLogRewritten (or SignatureError) unless ``head`` may extend what this
        party saw before; remember it as the newest seen."""
        head.verify(self._key)
        verified, seen = self.memory.load()
        known = [h for h in (verified, seen) if h is not None]
        for mine in known:
            if head.seq == mine.seq and head.hash != mine.hash:
                raise _forked(mine, head, "forked or rewritten")
        newest = max(known, key=lambda h: h.seq, default=None)
        if newest is not None and head.seq < newest.seq:
            # A reply computed before another may arrive after it: ask the log itself.
            entry = self._fetch(newest.seq)
            if entry is None:
                raise _cut(newest, head.seq)
            if entry.hash != newest.hash:
                raise _forked(newest, entry.hash, "rewritten")
            return
        if seen is None or head.seq > seen.seq:
            self.memory.save(verified, head)


@dataclass(frozen=True)
class AuditReport:
    verified_from: int  # the seq the check started from (0: the start of the log)
    verified_to: int
    entries_checked: int
    head: AuditHead


def verify_extension(
    source: AuditSource, memory: AuditMemory, newest: Callable[[], AuditHead | None]
) -> AuditReport:
    """Fetch the entries from the verified head to the newest and check every link;
    on success the newest becomes the verified head. ``newest()`` is the signed head of
    the last reply (already checked by :class:`AuditWatch`)."""
    verified, seen = memory.load()
    start = verified.seq if verified is not None else 1
    prev_hash = GENESIS_HASH
    expected = start
    entries: list[RemoteAuditEntry] = []
    for _ in range(MAX_PAGES):
        page = source.audit_entries(expected)
        if not page:
            break
        for entry in page:
            if entry.seq != expected:
                raise AuditLogRewritten(
                    f"the coordinator's audit log skips from entry {expected - 1} to "
                    f"{entry.seq}: entries were removed; {_WHAT_TO_DO}"
                )
            if verified is not None and entry.seq == verified.seq:
                if entry.hash != verified.hash:
                    raise _forked(verified, entry.hash, "rewritten")
            else:
                if entry.prev_hash != prev_hash or entry.computed_hash() != entry.hash:
                    raise AuditLogRewritten(
                        f"the coordinator's audit log entry {entry.seq} ({entry.event} "
                        f"{entry.subject}) does not chain to the entry before it: the log was "
                        f"altered; {_WHAT_TO_DO}"
                    )
            prev_hash = entry.hash
            expected += 1
            entries.append(entry)
    last = entries[-1] if entries else None
    if verified is not None and (last is None or last.seq < verified.seq):
        raise _cut(verified, last.seq if last else 0)
    if seen is not None:
        if last is None or last.seq < seen.seq:
            raise _cut(seen, last.seq if last else 0)
        held = entries[seen.seq - start] if seen.seq >= start else None
        if held is not None and held.hash != seen.hash:
            raise _forked(seen, held.hash, "rewritten")
    head = newest()
    if head is None or last is None:
        raise AuditLogRewritten("the coordinator sent no signed audit head: " + _WHAT_TO_DO)
    if head.seq > last.seq:
        raise _cut(head, last.seq)
    held = entries[head.seq - start] if head.seq >= start else None
    if held is None or held.hash != head.hash:
        raise _forked(head, held.hash if held else "(missing)", "rewritten")
    # The signed head is what we verified up to (entries after it are newer than it).
    memory.save(head, head)
    checked_from = 0 if verified is None else verified.seq
    return AuditReport(checked_from, head.seq, len(entries), head)


def audit(home: PartyHome) -> AuditReport:
    """`detente party audit`: check that the coordinator's log extends the head this party
    verified last, entry by entry, up to its newest signed head."""
    from party_client.remote import Coordinator

    with Coordinator.for_home(home) as coordinator:
        memory = memory_for(home.root, home.coordinator_certificate())
        return verify_extension(coordinator, memory, lambda: coordinator.last_head)
