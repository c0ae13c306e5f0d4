"""SqlStore: the coordinator's state over SQLAlchemy 2, SQLite by default.

What it holds: docs/architecture.md, state.

Each mutating method runs in one transaction together with its audit-log
entry (:mod:`coordinator.store.audit`), so a change and its audit record are
written together or not at all.

This module holds the core: the engine, the sessions and the one-writer lock,
with enrollments, parties, data sets and request nonces. The rest of the store
is mixed in from its own module: jobs (:mod:`coordinator.store.sql_jobs`),
sealed models (:mod:`coordinator.store.sql_models`), the audit log
(:mod:`coordinator.store.sql_audit`), the worker pool
(:mod:`coordinator.store.sql_pool`), partial uploads
(:mod:`coordinator.store.uploads`) and withdrawals
(:mod:`coordinator.store.withdrawals`).
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy.exc
from sqlalchemy import create_engine, delete, event, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from coordinator import migrations
from coordinator.store.audit import Audit
from coordinator.store.records import DatasetRecord, EnrollmentRecord, PartyRecord
from coordinator.store.sql_audit import AuditRows, HeadSigner
from coordinator.store.sql_jobs import JobRows
from coordinator.store.sql_models import ModelRows
from coordinator.store.sql_pool import PoolRows
from coordinator.store.tables import (
    DatasetRow,
    EnrollmentRow,
    OutputRow,
    PartyRow,
    RequestNonceRow,
)
from coordinator.store.uploads import PartialUploads
from coordinator.store.withdrawals import WithdrawalStore
from protocols.errors import AlreadyExists, NotAllowed


def _party(row: PartyRow) -> PartyRecord:
    return PartyRecord(row.name, row.signing_key, row.hpke_key, row.registration, row.registered_at)


def _dataset(row: DatasetRow) -> DatasetRecord:
    return DatasetRecord(
        row.dataset_id,
        row.owner_key,
        row.manifest,
        row.manifest_digest,
        row.blob_sha256,
        row.size,
        row.created_at,
        row.withdrawn_at,
        row.withdrawal,
    )


# The PostgreSQL advisory lock key that serialises writers (any constant of our own).
_WRITE_LOCK = 0x64657465  # "dete"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class SqlStore(PartialUploads, WithdrawalStore, PoolRows, JobRows, ModelRows, AuditRows):
    """:class:`CoordinatorStore` over any SQLAlchemy URL (SQLite file by default)."""

    def __init__(self, url: str, head_signer: HeadSigner | None = None) -> None:
        """``head_signer(seq, hash)`` signs each new audit head (the coordinator's key);
        without it entries are written unsigned (tests of the store alone)."""
        self.url = url
        self._head_signer = head_signer
        self._postgres = url.startswith("postgresql")
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            # The gRPC server and the scheduler share this store across threads.
            kwargs["connect_args"] = {"check_same_thread": False}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._require_schema(url)
        # One writer at a time in this process keeps the audit chain linear;
        # the unique seq/hash columns refuse a fork from a second process.
        self._write_lock = threading.RLock()

    def _require_schema(self, url: str) -> None:
        """Refuse a database not at the newest schema, naming `detente coordinator migrate`.

        A SQLite database with no table at all (a file just made) gets the
        schema here: there is nothing in it to lose, and a first start (the
        demo) needs no extra command. PostgreSQL, shared by replicas, is
        migrated only by the operator (docs/operations.md, databases).
        """
        if url.startswith("sqlite") and migrations.is_empty(self.engine):
            migrations.upgrade(url)
        try:
            migrations.require_current(self.engine, self.engine.url.render_as_string())
        except Exception:
            self.engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._write_lock, Session(self.engine, expire_on_commit=False) as session:
            with session.begin():
                if self._postgres:
                    # Replicas sharing the database: one writer at a time across all of
                    # them, so each audit entry links to the one before (released at commit).
                    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _WRITE_LOCK})
                yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    # enrollments ----------------------------------------------------------

    def add_enrollment(self, enrollment: EnrollmentRecord, audit: Audit) -> None:
        """Issue a token for a name; a name that is not yet registered may be re-issued."""
        with self._write() as s:
            if s.scalars(select(PartyRow.id).where(PartyRow.name == enrollment.name)).first():
                raise AlreadyExists(f"a party named {enrollment.name!r} is already registered")
            old = s.scalars(
                select(EnrollmentRow).where(EnrollmentRow.name == enrollment.name)
            ).first()
            if old is not None:
                s.delete(old)
                s.flush()
            s.add(
                EnrollmentRow(
                    name=enrollment.name,
                    token_sha256=enrollment.token_sha256,
                    created_at=enrollment.created_at,
                    expires_at=enrollment.expires_at,
                )
            )
            s.flush()
            self._append_audit(s, audit, enrollment.created_at)

    def list_enrollments(self) -> list[EnrollmentRecord]:
        with self._read() as s:
            return [
                EnrollmentRecord(
                    r.name, r.token_sha256, r.created_at, r.expires_at, r.used_at, r.used_by
                )
                for r in s.scalars(select(EnrollmentRow).order_by(EnrollmentRow.id))
            ]

    @staticmethod
    def _use_enrollment(s: Session, party: PartyRecord, token_sha256: str) -> None:
        """Consume the name's enrollment token, or raise NotAllowed saying why not."""
        row = s.scalars(select(EnrollmentRow).where(EnrollmentRow.name == party.name)).first()
        hint = (
            f"ask the coordinator's operator for a new one (`detente coordinator enroll "
            f"--name {party.name}`) and pass it to `detente party init --enrollment-token`"
        )
        if row is None or not hmac.compare_digest(row.token_sha256, token_sha256):
            raise NotAllowed(f"no valid enrollment token for the name {party.name!r}: {hint}")
        if row.used_at is not None:
            raise NotAllowed(f"the enrollment token for {party.name!r} was already used: {hint}")
        if row.expires_at <= party.registered_at:
            raise NotAllowed(f"the enrollment token for {party.name!r} has expired: {hint}")
        row.used_at = party.registered_at
        row.used_by = party.signing_key

    # parties --------------------------------------------------------------

    def add_party(
        self, party: PartyRecord, audit: Audit, enrollment_token_sha256: str | None = None
    ) -> None:
        """Add a party; with ``enrollment_token_sha256``, consume its name's token in the
        same transaction (a registration and its token are used together or not at all)."""
        try:
            with self._write() as s:
                if enrollment_token_sha256 is not None:
                    self._use_enrollment(s, party, enrollment_token_sha256)
                s.add(
                    PartyRow(
                        name=party.name,
                        signing_key=party.signing_key,
                        hpke_key=party.hpke_key,
                        registration=party.registration,
                        registered_at=party.registered_at,
                    )
                )
                s.flush()
                self._append_audit(s, audit, party.registered_at)
        except sqlalchemy.exc.IntegrityError:
            raise AlreadyExists(
                f"a party named {party.name!r} or with key {party.signing_key[:16]}… "
                "is already registered"
            ) from None

    def get_party_by_key(self, signing_key: str) -> PartyRecord | None:
        with self._read() as s:
            row = s.scalars(select(PartyRow).where(PartyRow.signing_key == signing_key)).first()
            return None if row is None else _party(row)

    def get_party_by_name(self, name: str) -> PartyRecord | None:
        with self._read() as s:
            row = s.scalars(select(PartyRow).where(PartyRow.name == name)).first()
            return None if row is None else _party(row)

    def list_parties(self) -> list[PartyRecord]:
        with self._read() as s:
            return [_party(r) for r in s.scalars(select(PartyRow).order_by(PartyRow.id))]

    # datasets -------------------------------------------------------------

    def add_dataset(
        self,
        dataset: DatasetRecord,
        audit: Audit,
        also: Callable[[Session], object] | None = None,
    ) -> None:
        """Record ``dataset`` and its audit entry in one transaction, with ``also`` (a further
        write of the caller's, e.g. removing the partial upload it completes)."""
        try:
            with self._write() as s:
                if also is not None:
                    also(s)
                s.add(
                    DatasetRow(
                        dataset_id=dataset.dataset_id,
                        owner_key=dataset.owner_key,
                        manifest=dataset.manifest,
                        manifest_digest=dataset.manifest_digest,
                        blob_sha256=dataset.blob_sha256,
                        size=dataset.size,
                        created_at=dataset.created_at,
                    )
                )
                s.flush()
                self._append_audit(s, audit, dataset.created_at)
        except sqlalchemy.exc.IntegrityError:
            raise AlreadyExists(
                f"data set {dataset.dataset_id!r} already exists: choose another dataset id"
            ) from None

    def get_dataset(self, dataset_id: str) -> DatasetRecord | None:
        with self._read() as s:
            row = s.scalars(select(DatasetRow).where(DatasetRow.dataset_id == dataset_id)).first()
            return None if row is None else _dataset(row)

    def list_datasets(self) -> list[DatasetRecord]:
        with self._read() as s:
            return [_dataset(r) for r in s.scalars(select(DatasetRow).order_by(DatasetRow.id))]

    def blob_referenced(self, sha256: str) -> bool:
        with self._read() as s:
            in_datasets = s.scalars(
                select(DatasetRow.id)
                .where(DatasetRow.blob_sha256 == sha256, DatasetRow.withdrawn_at.is_(None))
                .limit(1)
            ).first()
            in_outputs = s.scalars(
                select(OutputRow.id).where(OutputRow.blob_sha256 == sha256).limit(1)
            ).first()
            return in_datasets is not None or in_outputs is not None

    # request nonces -------------------------------------------------------

    def remember_nonce(self, signer: str, nonce: str, forget_after: int, now: int) -> bool:
        """Record a verified request's nonce until ``forget_after`` (Unix seconds);
        False if it is already recorded (a replay). Nonces past their window are
        dropped in the same transaction, so the table holds one window's worth."""
        try:
            with self._write() as s:
                s.execute(delete(RequestNonceRow).where(RequestNonceRow.forget_after < now))
                s.add(RequestNonceRow(signer=signer, nonce=nonce, forget_after=forget_after))
        except sqlalchemy.exc.IntegrityError:
            return False
        return True

    def remembered_nonces(self) -> int:
        with self._read() as s:
            return int(s.scalar(select(func.count()).select_from(RequestNonceRow)) or 0)
