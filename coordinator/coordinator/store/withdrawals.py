"""The store's part of a data set's withdrawal (protocols/SPEC.md §3.11), mixed into SqlStore.

One transaction marks the data set withdrawn, cancels the jobs that wait on
it (a running one is marked, and the scheduler's watchdog stops it), records
the sealed models trained on it retired, and writes the audit entries; so a
withdrawal is recorded whole or not at all. The workers' acknowledgements are
kept per worker (``withdrawal_deliveries``) so a worker that missed one gets
it when it is next reachable (coordinator.withdrawals).
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.store.audit import Audit
from coordinator.store.records import (
    APPROVED,
    CANCELLED,
    PROPOSED,
    RETIRED,
    RUNNING,
    SEALED,
    DatasetRecord,
    DeliveryRecord,
    now_ms,
)
from coordinator.store.tables import (
    DatasetRow,
    JobEventRow,
    JobRow,
    SealedModelRow,
    WithdrawalDeliveryRow,
)
from protocols.errors import NotFound


def withdrawal_reason(dataset_id: str) -> str:
    """The text a job cancelled by a withdrawal carries (its events, error and audit entry)."""
    return f"cancelled: data set {dataset_id!r} was withdrawn by its owner"


def _delivery(row: WithdrawalDeliveryRow) -> DeliveryRecord:
    return DeliveryRecord(
        row.dataset_id, row.worker, row.delivered_at, row.attempts or 0, row.error or ""
    )


class WithdrawalStore:
    """Withdrawals and their delivery to the workers (methods of :class:`SqlStore`)."""

    if TYPE_CHECKING:

        def _write(self) -> AbstractContextManager[Session]: ...
        def _read(self) -> AbstractContextManager[Session]: ...
        def _append_audit(self, session: Session, audit: Audit, at: int) -> None: ...
        def get_dataset(self, dataset_id: str) -> DatasetRecord | None: ...

    def withdraw_dataset(
        self, dataset_id: str, withdrawal: bytes, audit: Audit
    ) -> tuple[DatasetRecord, list[str], bool]:
        """Mark the data set withdrawn and stop what uses it; (record, the ids of the jobs
        cancelled or stopped, whether it was withdrawn just now).

        A data set already withdrawn is left as it is (its first statement is
        kept): withdrawing twice is harmless.
        """
        at = now_ms()
        reason = withdrawal_reason(dataset_id)
        stopped: list[str] = []
        with self._write() as s:
            row = s.scalars(select(DatasetRow).where(DatasetRow.dataset_id == dataset_id)).first()
            if row is None:
                raise NotFound(f"no data set {dataset_id!r}")
            if row.withdrawn_at is not None:
                fresh = False
            else:
                fresh = True
                row.withdrawn_at = at
                row.withdrawal = withdrawal
                s.flush()
                self._append_audit(s, audit, at)
                stopped = self._stop_jobs(s, dataset_id, reason, at)
        record = self.get_dataset(dataset_id)
        assert record is not None
        return record, stopped, fresh

    def _stop_jobs(self, s: Session, dataset_id: str, reason: str, at: int) -> list[str]:
        """Cancel the unfinished jobs naming the data set; retire the models trained on it."""
        detail = {"by": "withdrawal", "reason": reason, "dataset_id": dataset_id}
        stopped: list[str] = []
        for job in s.scalars(select(JobRow).order_by(JobRow.id)):
            if dataset_id not in json.loads(job.dataset_ids):
                continue
            if job.state in (PROPOSED, APPROVED):
                old = job.state
                job.state = CANCELLED
                job.updated_at = at
                job.cancel_reason = reason
                s.add(JobEventRow(job_id=job.job_id, at=at, kind="state", text=CANCELLED))
                s.add(JobEventRow(job_id=job.job_id, at=at, kind="cancel", text=reason))
                entry = {"from": old, "to": CANCELLED, **detail}
                self._append_audit(s, Audit("job.state", job.job_id, entry), at)
                stopped.append(job.job_id)
            elif job.state == RUNNING:
                # The scheduler's watchdog sees the reason and stops the enclave call.
                job.cancel_reason = reason
                s.add(JobEventRow(job_id=job.job_id, at=at, kind="cancel", text=reason))
                self._append_audit(s, Audit("job.cancel_requested", job.job_id, detail), at)
                stopped.append(job.job_id)
            model = s.scalars(
                select(SealedModelRow).where(SealedModelRow.job_id == job.job_id)
            ).first()
            if model is not None and model.state == SEALED:
                model.state = RETIRED
                model.retired_at = at
                text = (
                    f"model {model.model_id} retired: data set {dataset_id!r} it was trained on "
                    "was withdrawn, and each worker destroys it and its key"
                )
                s.add(JobEventRow(job_id=job.job_id, at=at, kind="model", text=text))
                entry = {"from": SEALED, "to": RETIRED, "withdrawn_dataset": dataset_id}
                self._append_audit(s, Audit("model.retired", model.model_id, entry), at)
        return stopped

    def withdrawn_datasets(self) -> list[DatasetRecord]:
        """Every withdrawn data set, oldest withdrawal first."""
        with self._read() as s:
            rows = s.scalars(
                select(DatasetRow)
                .where(DatasetRow.withdrawn_at.is_not(None))
                .order_by(DatasetRow.withdrawn_at, DatasetRow.id)
            )
            return [
                DatasetRecord(
                    r.dataset_id,
                    r.owner_key,
                    r.manifest,
                    r.manifest_digest,
                    r.blob_sha256,
                    r.size,
                    r.created_at,
                    r.withdrawn_at,
                    r.withdrawal,
                )
                for r in rows
            ]

    def deliveries(self, dataset_id: str | None = None) -> list[DeliveryRecord]:
        """The workers' acknowledgements (and failed attempts) of withdrawals."""
        query = select(WithdrawalDeliveryRow).order_by(WithdrawalDeliveryRow.id)
        if dataset_id is not None:
            query = query.where(WithdrawalDeliveryRow.dataset_id == dataset_id)
        with self._read() as s:
            return [_delivery(r) for r in s.scalars(query)]

    def record_delivery(self, dataset_id: str, worker: str, error: str | None) -> None:
        """Count an attempt to tell ``worker``; ``error`` None: it acknowledged (audited)."""
        at = now_ms()
        with self._write() as s:
            row = s.scalars(
                select(WithdrawalDeliveryRow).where(
                    WithdrawalDeliveryRow.dataset_id == dataset_id,
                    WithdrawalDeliveryRow.worker == worker,
                )
            ).first()
            if row is None:
                row = WithdrawalDeliveryRow(
                    dataset_id=dataset_id, worker=worker, attempts=0, error=""
                )
                s.add(row)
            if row.delivered_at is not None:
                return
            row.attempts = (row.attempts or 0) + 1
            if error is None:
                row.delivered_at = at
                row.error = ""
                s.flush()
                detail = {"worker": worker, "attempts": row.attempts}
                self._append_audit(s, Audit("dataset.withdrawal_delivered", dataset_id, detail), at)
            else:
                row.error = error[:500]
