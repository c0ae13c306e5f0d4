"""The worker pool's part of SqlStore: workers, and jobs as they start, finish and are
re-queued on workers.

A run of a job is named by its attempt number (counted by :meth:`start_job`):
whatever a run reports later — its result, its failure, its loss — is
recorded only while the job is still ``running`` that same attempt. So a late
result from a worker whose run was re-queued and started again elsewhere is
discarded, and a job never gets two results.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.store.audit import Audit
from coordinator.store.records import (
    APPROVED,
    CANCELLED,
    FAILED,
    RUNNING,
    WorkerRecord,
    now_ms,
)
from coordinator.store.tables import JobEventRow, JobRow, WorkerRow

# The job event a re-queue adds (kind), shown with the job's other events.
REQUEUED = "requeued"


def _worker(row: WorkerRow) -> WorkerRecord:
    return WorkerRecord(
        address=row.address,
        registered_at=row.registered_at,
        health=row.health,
        problem=row.problem or "",
        backend=row.backend or "",
        mrenclave=row.mrenclave or "",
        mrsigner=row.mrsigner or "",
        tcb_status=row.tcb_status or "",
        attested_at=row.attested_at,
        slots=row.slots or 0,
        busy=row.busy or 0,
        job_ids=list(json.loads(row.job_ids or "[]")),
        draining=bool(row.draining),
        last_seen=row.last_seen,
        checked_at=row.checked_at,
    )


class PoolRows:
    """Mixed into SqlStore: the rows of the worker pool and the runs of jobs on it."""

    if TYPE_CHECKING:

        def _write(self) -> AbstractContextManager[Session]: ...
        def _read(self) -> AbstractContextManager[Session]: ...
        def _append_audit(self, session: Session, audit: Audit, at: int) -> None: ...
        def _job_row(self, s: Session, job_id: str) -> JobRow: ...

    # workers --------------------------------------------------------------

    def register_worker(self, address: str, by: str) -> tuple[WorkerRecord, bool]:
        """Add ``address`` to the pool (audited); an address already there is kept as it
        is. Returns the record and whether it is new."""
        at = now_ms()
        with self._write() as s:
            row = s.scalars(select(WorkerRow).where(WorkerRow.address == address)).first()
            if row is not None:
                return _worker(row), False
            row = WorkerRow(address=address, registered_at=at, health="not checked yet")
            s.add(row)
            s.flush()
            self._append_audit(s, Audit("worker.registered", address, {"by": by}), at)
            return _worker(row), True

    def remove_worker(self, address: str, by: str) -> bool:
        """Take ``address`` out of the pool (audited); False if it was not in it."""
        at = now_ms()
        with self._write() as s:
            row = s.scalars(select(WorkerRow).where(WorkerRow.address == address)).first()
            if row is None:
                return False
            s.delete(row)
            self._append_audit(s, Audit("worker.removed", address, {"by": by}), at)
            return True

    def list_workers(self) -> list[WorkerRecord]:
        with self._read() as s:
            return [_worker(r) for r in s.scalars(select(WorkerRow).order_by(WorkerRow.id))]

    def get_worker(self, address: str) -> WorkerRecord | None:
        with self._read() as s:
            row = s.scalars(select(WorkerRow).where(WorkerRow.address == address)).first()
            return None if row is None else _worker(row)

    def record_worker_check(self, record: WorkerRecord, audit: Audit | None = None) -> bool:
        """Store the outcome of a check of a registered worker; with ``audit``, log it
        (an attestation passed or refused). False if the worker was removed meanwhile."""
        with self._write() as s:
            row = s.scalars(select(WorkerRow).where(WorkerRow.address == record.address)).first()
            if row is None:
                return False
            row.health = record.health
            row.problem = record.problem[:2000]
            row.backend = record.backend
            row.mrenclave = record.mrenclave
            row.mrsigner = record.mrsigner
            row.tcb_status = record.tcb_status
            row.attested_at = record.attested_at
            row.slots = record.slots
            row.busy = record.busy
            row.job_ids = json.dumps(record.job_ids)
            row.draining = record.draining
            row.last_seen = record.last_seen
            row.checked_at = record.checked_at
            if audit is not None:
                self._append_audit(s, audit, record.checked_at or now_ms())
            return True

    # runs of jobs on workers ----------------------------------------------

    def start_job(self, job_id: str, worker: str = "") -> int:
        """``approved`` → ``running`` on ``worker``, counting the attempt; returns the
        attempt number, 0 if the job was not approved (it then stays as it is)."""
        at = now_ms()
        with self._write() as s:
            row = self._job_row(s, job_id)
            if row.state != APPROVED:
                return 0
            row.state = RUNNING
            row.updated_at = at
            row.started_at = at
            row.worker = worker
            row.attempts = (row.attempts or 0) + 1
            s.add(JobEventRow(job_id=job_id, at=at, kind="state", text=RUNNING))
            if worker:
                text = f"attempt {row.attempts} on worker {worker}"
                s.add(JobEventRow(job_id=job_id, at=at, kind="worker", text=text))
            detail: dict[str, Any] = {"from": APPROVED, "to": RUNNING, "attempt": row.attempts}
            if worker:
                detail["worker"] = worker
            self._append_audit(s, Audit("job.state", job_id, detail), at)
            return int(row.attempts)

    def requeue_job(
        self, job_id: str, attempt: int, worker: str, reason: str, lost: bool, max_losses: int
    ) -> str | None:
        """Put a run cut short by its worker back in the queue: ``running`` (this attempt)
        → ``approved``, audited as ``job.requeued`` with the worker and the reason.

        ``lost`` counts a worker loss (it died, or its call broke); after
        ``max_losses`` of them the job fails instead, naming `detente party retry`.
        A job whose cancel was requested ends ``cancelled``. Returns the new state,
        or None if this run is no longer the job's (nothing changed).
        """
        at = now_ms()
        with self._write() as s:
            row = self._job_row(s, job_id)
            if row.state != RUNNING or row.attempts != attempt:
                return None
            losses = (row.worker_losses or 0) + (1 if lost else 0)
            row.worker_losses = losses
            row.updated_at = at
            detail: dict[str, Any] = {
                "worker": worker,
                "reason": reason,
                "attempt": attempt,
                "worker_losses": losses,
            }
            if row.cancel_reason:
                row.state = CANCELLED
                s.add(JobEventRow(job_id=job_id, at=at, kind="state", text=row.cancel_reason))
                self._append_audit(
                    s, Audit("job.state", job_id, {"from": RUNNING, "to": CANCELLED, **detail}), at
                )
                return CANCELLED
            if losses > max_losses:
                row.state = FAILED
                row.error = (
                    f"the job lost its worker {losses} times (last {worker}: {reason}); the "
                    f"coordinator stopped re-queuing it. Once the workers are healthy "
                    f"(`detente coordinator workers`), its proposer runs it again from its last "
                    f"checkpoint with `detente party retry {job_id}`"
                )
                s.add(JobEventRow(job_id=job_id, at=at, kind="state", text=FAILED))
                s.add(JobEventRow(job_id=job_id, at=at, kind="error", text=row.error))
                self._append_audit(
                    s, Audit("job.state", job_id, {"from": RUNNING, "to": FAILED, **detail}), at
                )
                return FAILED
            row.state = APPROVED
            text = f"re-queued: worker {worker} {reason}"
            s.add(JobEventRow(job_id=job_id, at=at, kind=REQUEUED, text=text))
            s.add(JobEventRow(job_id=job_id, at=at, kind="state", text=APPROVED))
            self._append_audit(s, Audit("job.requeued", job_id, detail), at)
            return APPROVED

    def jobs_on_worker(self, worker: str) -> list[str]:
        """Ids of the jobs ``running`` on ``worker``, as the store records them."""
        with self._read() as s:
            rows = s.scalars(
                select(JobRow.job_id)
                .where(JobRow.state == RUNNING, JobRow.worker == worker)
                .order_by(JobRow.id)
            )
            return list(rows)
