"""The store's partial uploads (table ``partial_uploads``): resumable uploads not yet complete.

A partial upload is the coordinator's bookkeeping only — never a data set:
:meth:`CoordinatorStore.list_datasets` and ``get_dataset`` do not see it, so
no listing, dashboard page or job terms can name it. It becomes a data set in
one transaction (:meth:`PartialUploads.complete_partial`: the data set row,
its audit entry, and the partial's removal) once the whole ciphertext has
been checked against the signed manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy.exc
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from coordinator.store.audit import Audit
from coordinator.store.records import DatasetRecord
from coordinator.store.tables import DatasetRow, PartialUploadRow
from protocols.errors import AlreadyExists


@dataclass(frozen=True)
class PartialUpload:
    upload_id: str
    dataset_id: str
    owner_key: str
    manifest: bytes
    manifest_digest: str
    size: int  # the manifest's ciphertext_size
    received: int  # bytes written and synced to the temporary file
    temp_name: str  # the temporary file's name in the blob folder
    created_at: int
    updated_at: int


def _partial(row: PartialUploadRow) -> PartialUpload:
    return PartialUpload(
        row.upload_id,
        row.dataset_id,
        row.owner_key,
        row.manifest,
        row.manifest_digest,
        row.size,
        row.received,
        row.temp_name,
        row.created_at,
        row.updated_at,
    )


class PartialUploads:
    """Mixed into :class:`coordinator.store.SqlStore` (which provides the sessions)."""

    if TYPE_CHECKING:

        def _write(self) -> AbstractContextManager[Session]: ...
        def _read(self) -> AbstractContextManager[Session]: ...
        def _append_audit(self, session: Session, audit: Audit, at: int) -> None: ...
        def add_dataset(
            self,
            dataset: DatasetRecord,
            audit: Audit,
            also: Callable[[Session], object] | None = None,
        ) -> None: ...

    def add_partial(self, partial: PartialUpload, replaces: str | None = None) -> None:
        """Record a new partial upload (replacing the partial ``replaces`` in the same
        transaction); AlreadyExists if its data set id is taken by a data set or another
        partial."""
        try:
            with self._write() as s:
                if replaces is not None:
                    s.execute(
                        delete(PartialUploadRow).where(PartialUploadRow.upload_id == replaces)
                    )
                    s.flush()
                if s.scalars(
                    select(DatasetRow.id).where(DatasetRow.dataset_id == partial.dataset_id)
                ).first():
                    raise AlreadyExists(f"data set {partial.dataset_id!r} already exists")
                s.add(PartialUploadRow(**partial.__dict__))
        except sqlalchemy.exc.IntegrityError:
            raise AlreadyExists(
                f"an upload of data set {partial.dataset_id!r} was started at the same time"
            ) from None

    def get_partial(self, upload_id: str) -> PartialUpload | None:
        with self._read() as s:
            row = s.get(PartialUploadRow, upload_id)
            return None if row is None else _partial(row)

    def partial_for_dataset(self, dataset_id: str) -> PartialUpload | None:
        with self._read() as s:
            row = s.scalars(
                select(PartialUploadRow).where(PartialUploadRow.dataset_id == dataset_id)
            ).first()
            return None if row is None else _partial(row)

    def list_partials(self) -> list[PartialUpload]:
        with self._read() as s:
            rows = s.scalars(select(PartialUploadRow).order_by(PartialUploadRow.created_at))
            return [_partial(r) for r in rows]

    def set_received(self, upload_id: str, received: int, at: int) -> None:
        """Record that ``received`` bytes are synced to the partial's file (an acknowledgement)."""
        with self._write() as s:
            s.execute(
                update(PartialUploadRow)
                .where(PartialUploadRow.upload_id == upload_id)
                .values(received=received, updated_at=at)
            )

    def delete_partial(self, upload_id: str) -> None:
        with self._write() as s:
            s.execute(delete(PartialUploadRow).where(PartialUploadRow.upload_id == upload_id))

    def idle_partials(self, before: int) -> Iterator[PartialUpload]:
        """Partial uploads with no acknowledged byte since ``before`` (Unix ms)."""
        with self._read() as s:
            rows = s.scalars(
                select(PartialUploadRow).where(PartialUploadRow.updated_at < before)
            ).all()
        return iter([_partial(r) for r in rows])

    def complete_partial(self, upload_id: str, dataset: DatasetRecord, audit: Audit) -> None:
        """The partial becomes ``dataset``: the data set row, its audit entry and the
        partial's removal in one transaction."""
        self.add_dataset(
            dataset,
            audit,
            also=lambda s: s.execute(
                delete(PartialUploadRow).where(PartialUploadRow.upload_id == upload_id)
            ),
        )
