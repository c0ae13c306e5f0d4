"""SqlStore: the coordinator's state over SQLAlchemy 2, SQLite by default.

What it holds: docs/architecture.md, state.

Each mutating method runs in one transaction together with its audit-log
entry (:mod:`coordinator.store.audit`), so a change and its audit record are
written together or not at all.
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import sqlalchemy.exc
from sqlalchemy import create_engine, delete, event, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from coordinator import migrations
from coordinator.store.audit import Audit, AuditEntry, StoredAudit, next_entry
from coordinator.store.records import (
    APPROVED,
    CANCELLED,
    FAILED,
    FINISHED_STATES,
    PROPOSED,
    REJECTED,
    RETIRED,
    RUNNING,
    SUCCEEDED,
    ApprovalRecord,
    DatasetRecord,
    EnrollmentRecord,
    EventRecord,
    JobRecord,
    ModelRecord,
    PartyRecord,
    QueryCount,
    RetirementRecord,
    StoredOutput,
    now_ms,
)
from coordinator.store.sql_pool import PoolRows
from coordinator.store.tables import (
    ApprovalRow,
    AuditRow,
    DatasetRow,
    EnrollmentRow,
    JobEventRow,
    JobRow,
    ModelQueriesRow,
    ModelRetirementRow,
    OutputRow,
    PartyRow,
    RequestNonceRow,
    SealedModelRow,
)
from coordinator.store.uploads import PartialUploads
from coordinator.store.withdrawals import WithdrawalStore
from protocols import canonical
from protocols.audit_head import AuditHead
from protocols.errors import AlreadyExists, NotAllowed, NotFound, WrongState


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


HeadSigner = Callable[[int, str], bytes]
# The PostgreSQL advisory lock key that serialises writers (any constant of our own).
_WRITE_LOCK = 0x64657465  # "dete"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class SqlStore(PartialUploads, WithdrawalStore, PoolRows):
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

    def add_dataset(self, dataset: DatasetRecord, audit: Audit) -> None:
        try:
            with self._write() as s:
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

    # jobs -----------------------------------------------------------------

    def add_job(self, job: JobRecord, audit: Audit) -> None:
        try:
            with self._write() as s:
                s.add(
                    JobRow(
                        job_id=job.job_id,
                        terms=job.terms,
                        terms_digest=job.terms_digest,
                        proposer=job.proposer,
                        dataset_ids=json.dumps(job.dataset_ids),
                        required_approvers=json.dumps(job.required_approvers),
                        recipients=json.dumps(job.recipients),
                        state=job.state,
                        error=job.error,
                        created_at=job.created_at,
                        updated_at=job.updated_at,
                        result_statement=None,
                    )
                )
                s.flush()
                s.add(
                    JobEventRow(job_id=job.job_id, at=job.created_at, kind="state", text=job.state)
                )
                self._append_audit(s, audit, job.created_at)
        except sqlalchemy.exc.IntegrityError:
            raise AlreadyExists(
                f"job {job.job_id!r} already exists: propose the job under another job id"
            ) from None

    def _job(self, s: Session, row: JobRow) -> JobRecord:
        approvals = s.scalars(
            select(ApprovalRow).where(ApprovalRow.job_id == row.job_id).order_by(ApprovalRow.id)
        )
        outputs = s.scalars(
            select(OutputRow).where(OutputRow.job_id == row.job_id).order_by(OutputRow.id)
        )
        events = s.scalars(
            select(JobEventRow).where(JobEventRow.job_id == row.job_id).order_by(JobEventRow.id)
        )
        return JobRecord(
            job_id=row.job_id,
            terms=row.terms,
            terms_digest=row.terms_digest,
            proposer=row.proposer,
            dataset_ids=list(json.loads(row.dataset_ids)),
            required_approvers=list(json.loads(row.required_approvers)),
            state=row.state,
            error=row.error,
            created_at=row.created_at,
            updated_at=row.updated_at,
            result_statement=row.result_statement,
            approvals=[ApprovalRecord(a.approver, a.envelope, a.at) for a in approvals],
            outputs=[StoredOutput(o.name, o.blob_sha256, o.size) for o in outputs],
            events=[EventRecord(e.at, e.kind, e.text) for e in events],
            recipients=list(json.loads(row.recipients or "[]")),
            attempts=row.attempts or 0,
            started_at=row.started_at,
            cancel_reason=row.cancel_reason or "",
            rejection=row.rejection,
            worker=row.worker or "",
            worker_losses=row.worker_losses or 0,
        )

    def _job_row(self, s: Session, job_id: str) -> JobRow:
        row = s.scalars(select(JobRow).where(JobRow.job_id == job_id)).first()
        if row is None:
            raise NotFound(f"no job {job_id!r}: list jobs with `detente party jobs`")
        return row

    def get_job(self, job_id: str) -> JobRecord:
        with self._read() as s:
            return self._job(s, self._job_row(s, job_id))

    def list_jobs(self) -> list[JobRecord]:
        with self._read() as s:
            return [self._job(s, r) for r in s.scalars(select(JobRow).order_by(JobRow.id))]

    def job_ids_in_states(self, states: Sequence[str]) -> list[str]:
        with self._read() as s:
            rows = s.scalars(
                select(JobRow.job_id).where(JobRow.state.in_(list(states))).order_by(JobRow.id)
            )
            return list(rows)

    def add_approval(
        self, job_id: str, approval: ApprovalRecord, audit: Audit, complete: Audit | None
    ) -> None:
        """Record an approval; with ``complete`` also move the job to ``approved``."""
        try:
            with self._write() as s:
                row = self._job_row(s, job_id)
                s.add(
                    ApprovalRow(
                        job_id=job_id,
                        approver=approval.approver,
                        envelope=approval.envelope,
                        at=approval.at,
                    )
                )
                s.flush()
                self._append_audit(s, audit, approval.at)
                if complete is not None:
                    old = row.state
                    row.state = APPROVED
                    row.updated_at = approval.at
                    s.add(JobEventRow(job_id=job_id, at=approval.at, kind="state", text=APPROVED))
                    detail = {"from": old, "to": APPROVED, **complete.detail}
                    self._append_audit(s, Audit(complete.event, job_id, detail), approval.at)
        except sqlalchemy.exc.IntegrityError:
            raise AlreadyExists(
                f"{approval.approver[:16]}… has already approved job {job_id!r}"
            ) from None

    def transition(
        self,
        job_id: str,
        from_states: Sequence[str],
        to_state: str,
        text: str,
        error: str = "",
        audit_detail: dict[str, Any] | None = None,
        attempt: int | None = None,
    ) -> bool:
        """Move a job to ``to_state`` if it is in one of ``from_states`` (and, with
        ``attempt``, still in that run: see :mod:`coordinator.store.sql_pool`); False
        otherwise."""
        at = now_ms()
        with self._write() as s:
            row = self._job_row(s, job_id)
            if row.state not in from_states or (attempt is not None and row.attempts != attempt):
                return False
            old = row.state
            row.state = to_state
            row.updated_at = at
            row.error = error
            if to_state == APPROVED:  # a retry starts with no cancel request pending
                row.cancel_reason = ""
                if old == FAILED:  # a party acted: the worker losses count afresh
                    row.worker_losses = 0
            s.add(JobEventRow(job_id=job_id, at=at, kind="state", text=text))
            if error:
                s.add(JobEventRow(job_id=job_id, at=at, kind="error", text=error))
            detail = {"from": old, "to": to_state, **(audit_detail or {})}
            self._append_audit(s, Audit("job.state", job_id, detail), at)
            return True

    def add_event(self, job_id: str, kind: str, text: str) -> None:
        with self._write() as s:
            self._job_row(s, job_id)
            s.add(JobEventRow(job_id=job_id, at=now_ms(), kind=kind, text=text))

    def request_cancel(self, job_id: str, reason: str, by: str) -> JobRecord:
        """Cancel a job that has not finished.

        A proposed or approved job is ``cancelled`` at once; a running job is
        marked, and the scheduler that runs it stops its enclave call and marks
        it ``cancelled`` (or the next start does, if the coordinator is down).
        """
        at = now_ms()
        text = f"cancelled by {by}" + (f": {reason}" if reason else "")
        with self._write() as s:
            row = self._job_row(s, job_id)
            if row.state in FINISHED_STATES:
                raise WrongState(
                    f"job {job_id!r} is {row.state}; only an unfinished job is cancelled"
                )
            detail = {"by": by, "reason": reason}
            if row.state == RUNNING:
                if row.cancel_reason:
                    return self._job(s, row)
                row.cancel_reason = text
                s.add(JobEventRow(job_id=job_id, at=at, kind="cancel", text=text))
                self._append_audit(s, Audit("job.cancel_requested", job_id, detail), at)
            else:
                old = row.state
                row.state = CANCELLED
                row.updated_at = at
                row.cancel_reason = text
                s.add(JobEventRow(job_id=job_id, at=at, kind="state", text=CANCELLED))
                s.add(JobEventRow(job_id=job_id, at=at, kind="cancel", text=text))
                detail = {"from": old, "to": CANCELLED, **detail}
                self._append_audit(s, Audit("job.state", job_id, detail), at)
            s.flush()
            return self._job(s, row)

    def reject_job(self, job_id: str, rejection: bytes, audit: Audit) -> JobRecord:
        """``proposed`` → ``rejected`` for good, keeping the signed rejection; WrongState
        if the job is no longer proposed."""
        at = now_ms()
        with self._write() as s:
            row = self._job_row(s, job_id)
            if row.state != PROPOSED:
                raise WrongState(f"job {job_id!r} is {row.state}; only a proposed job is rejected")
            row.state, row.updated_at, row.rejection = REJECTED, at, rejection
            s.add(JobEventRow(job_id=job_id, at=at, kind="state", text=REJECTED))
            self._append_audit(s, audit, at)
            s.flush()
            return self._job(s, row)

    def finish_job(
        self,
        job_id: str,
        outputs: list[StoredOutput],
        result_statement: bytes | None,
        model: ModelRecord | None = None,
        attempt: int | None = None,
    ) -> bool:
        """Record outputs, the result statement and ``succeeded`` in one transaction;
        with ``model``, the model the job sealed in the enclave too (and its event).

        With ``attempt``, only while the job is still ``running`` that run: False
        (nothing recorded) for a late result of a run that was re-queued or stopped.
        """
        at = now_ms()
        with self._write() as s:
            row = self._job_row(s, job_id)
            if attempt is not None and (row.state != RUNNING or row.attempts != attempt):
                return False
            old = row.state
            for output in outputs:
                s.add(
                    OutputRow(
                        job_id=job_id,
                        name=output.name,
                        blob_sha256=output.blob_sha256,
                        size=output.size,
                    )
                )
            row.result_statement = result_statement
            row.state = SUCCEEDED
            row.updated_at = at
            row.error = ""
            s.add(JobEventRow(job_id=job_id, at=at, kind="state", text=SUCCEEDED))
            detail: dict[str, Any] = {
                "from": old,
                "to": SUCCEEDED,
                "outputs": [
                    {"name": o.name, "blob_sha256": o.blob_sha256, "size": o.size} for o in outputs
                ],
                "result_statement_sha256": (
                    canonical.sha256_hex(result_statement) if result_statement else None
                ),
            }
            self._append_audit(s, Audit("job.state", job_id, detail), at)
            if model is not None:
                self._add_model(s, model, at)
            return True

    def _add_model(self, s: Session, model: ModelRecord, at: int) -> None:
        s.add(
            SealedModelRow(
                model_id=model.model_id,
                job_id=model.job_id,
                terms_digest=model.terms_digest,
                owners=json.dumps(model.owners),
                queriers=json.dumps(model.queriers),
                state=model.state,
                created_at=at,
                retired_at=None,
                worker=model.worker,
            )
        )
        s.add(
            JobEventRow(
                job_id=model.job_id,
                at=at,
                kind="model",
                text=f"model sealed in the enclave as {model.model_id}"
                + (f" (kept by worker {model.worker})" if model.worker else ""),
            )
        )
        s.flush()
        detail = {
            "job_id": model.job_id,
            "terms_digest": model.terms_digest,
            "owners": model.owners,
            "queriers": model.queriers,
            "worker": model.worker,
        }
        self._append_audit(s, Audit("model.sealed", model.model_id, detail), at)

    def get_output(self, job_id: str, name: str) -> StoredOutput:
        with self._read() as s:
            self._job_row(s, job_id)
            row = s.scalars(
                select(OutputRow).where(OutputRow.job_id == job_id, OutputRow.name == name)
            ).first()
            if row is None:
                raise NotFound(f"job {job_id!r} has no output {name!r}")
            return StoredOutput(row.name, row.blob_sha256, row.size)

    # sealed models --------------------------------------------------------

    def _model(self, s: Session, row: SealedModelRow) -> ModelRecord:
        retirements = s.scalars(
            select(ModelRetirementRow)
            .where(ModelRetirementRow.model_id == row.model_id)
            .order_by(ModelRetirementRow.id)
        )
        queries = s.scalars(
            select(ModelQueriesRow)
            .where(ModelQueriesRow.model_id == row.model_id)
            .order_by(ModelQueriesRow.id)
        )
        return ModelRecord(
            model_id=row.model_id,
            job_id=row.job_id,
            terms_digest=row.terms_digest,
            owners=list(json.loads(row.owners)),
            queriers=list(json.loads(row.queriers)),
            state=row.state,
            created_at=row.created_at,
            retired_at=row.retired_at,
            retirements=[RetirementRecord(r.owner, r.envelope, r.at) for r in retirements],
            queries=[QueryCount(q.querier, q.queries, q.rows) for q in queries],
            worker=row.worker or "",
        )

    def _model_row(self, s: Session, model_id: str) -> SealedModelRow:
        row = s.scalars(select(SealedModelRow).where(SealedModelRow.model_id == model_id)).first()
        if row is None:
            raise NotFound(f"no sealed model {model_id!r}: list models with `detente party models`")
        return row

    def get_model(self, model_id: str) -> ModelRecord:
        with self._read() as s:
            return self._model(s, self._model_row(s, model_id))

    def list_models(self) -> list[ModelRecord]:
        with self._read() as s:
            rows = s.scalars(select(SealedModelRow).order_by(SealedModelRow.id))
            return [self._model(s, r) for r in rows]

    def count_query(self, model_id: str, querier: str, rows: int) -> None:
        """Count one answered query of ``rows`` rows for ``querier`` (and audit it)."""
        at = now_ms()
        with self._write() as s:
            self._model_row(s, model_id)
            row = s.scalars(
                select(ModelQueriesRow).where(
                    ModelQueriesRow.model_id == model_id, ModelQueriesRow.querier == querier
                )
            ).first()
            if row is None:
                row = ModelQueriesRow(model_id=model_id, querier=querier, queries=0, rows=0)
                s.add(row)
            row.queries = (row.queries or 0) + 1
            row.rows = (row.rows or 0) + rows
            s.flush()
            detail = {"querier": querier, "rows": rows}
            self._append_audit(s, Audit("model.query", model_id, detail), at)

    def add_retirement(
        self, model_id: str, retirement: RetirementRecord, audit: Audit
    ) -> ModelRecord:
        """Keep one owner's retirement; an owner's second one changes nothing."""
        with self._write() as s:
            row = self._model_row(s, model_id)
            already = s.scalars(
                select(ModelRetirementRow.id).where(
                    ModelRetirementRow.model_id == model_id,
                    ModelRetirementRow.owner == retirement.owner,
                )
            ).first()
            if already is None:
                s.add(
                    ModelRetirementRow(
                        model_id=model_id,
                        owner=retirement.owner,
                        envelope=retirement.envelope,
                        at=retirement.at,
                    )
                )
                s.flush()
                self._append_audit(s, audit, retirement.at)
            return self._model(s, row)

    def retire_model(self, model_id: str, audit: Audit) -> ModelRecord:
        """Mark the model retired (the enclave destroyed it); already retired: unchanged."""
        at = now_ms()
        with self._write() as s:
            row = self._model_row(s, model_id)
            if row.state != RETIRED:
                old = row.state
                row.state = RETIRED
                row.retired_at = at
                s.add(
                    JobEventRow(
                        job_id=row.job_id,
                        at=at,
                        kind="model",
                        text=f"model {model_id} retired: the enclave destroyed it and its key",
                    )
                )
                detail = {"from": old, "to": RETIRED, **audit.detail}
                self._append_audit(s, Audit(audit.event, model_id, detail), at)
            s.flush()
            return self._model(s, row)

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

    # audit ----------------------------------------------------------------

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
