"""The sealed models' part of SqlStore: a model sealed by a job, its answered queries,
its owners' retirements and its retirement.

A model's record is made of its row, its retirements and its query counts
(:meth:`ModelRows._model`); every change is audited in the same transaction.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.store.audit import Audit
from coordinator.store.records import (
    RETIRED,
    ModelRecord,
    QueryCount,
    RetirementRecord,
    now_ms,
)
from coordinator.store.tables import (
    JobEventRow,
    ModelQueriesRow,
    ModelRetirementRow,
    SealedModelRow,
)
from protocols.errors import NotFound


class ModelRows:
    """Mixed into SqlStore: the rows of sealed models."""

    if TYPE_CHECKING:

        def _write(self) -> AbstractContextManager[Session]: ...
        def _read(self) -> AbstractContextManager[Session]: ...
        def _append_audit(self, session: Session, audit: Audit, at: int) -> None: ...

    # sealed models --------------------------------------------------------

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
