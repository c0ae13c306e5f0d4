"""The jobs' part of SqlStore: proposal, approvals, rejection, state changes,
cancellation, the result and its outputs.

Each change moves a job and adds its event and audit entry in one transaction;
a job's run on a worker (start, re-queue) is in :mod:`coordinator.store.sql_pool`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import sqlalchemy.exc
from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.store.audit import Audit
from coordinator.store.records import (
    APPROVED,
    CANCELLED,
    FAILED,
    FINISHED_STATES,
    PROPOSED,
    REJECTED,
    RUNNING,
    SUCCEEDED,
    ApprovalRecord,
    EventRecord,
    JobRecord,
    ModelRecord,
    StoredOutput,
    now_ms,
)
from coordinator.store.tables import ApprovalRow, JobEventRow, JobRow, OutputRow
from protocols import canonical
from protocols.errors import AlreadyExists, NotFound, WrongState


class JobRows:
    """Mixed into SqlStore: the rows of jobs, their approvals, events and outputs."""

    if TYPE_CHECKING:

        def _write(self) -> AbstractContextManager[Session]: ...
        def _read(self) -> AbstractContextManager[Session]: ...
        def _append_audit(self, session: Session, audit: Audit, at: int) -> None: ...
        def _add_model(self, s: Session, model: ModelRecord, at: int) -> None: ...

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

    def get_output(self, job_id: str, name: str) -> StoredOutput:
        with self._read() as s:
            self._job_row(s, job_id)
            row = s.scalars(
                select(OutputRow).where(OutputRow.job_id == job_id, OutputRow.name == name)
            ).first()
            if row is None:
                raise NotFound(f"job {job_id!r} has no output {name!r}")
            return StoredOutput(row.name, row.blob_sha256, row.size)
