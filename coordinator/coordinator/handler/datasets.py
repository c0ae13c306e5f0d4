"""Data set intake (a signed manifest, then ciphertext checked against it) and who sees which."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from coordinator.blobs import BlobStore
from coordinator.store import (
    Audit,
    CoordinatorStore,
    DatasetRecord,
    DeliveryRecord,
    now_ms,
    withdrawal_reason,
)
from coordinator.withdrawals import WithdrawalDelivery
from protocols.documents import DatasetManifest, DatasetWithdrawal
from protocols.errors import (
    AlreadyExists,
    IntegrityError,
    InvalidRequest,
    NotAllowed,
    NotFound,
    NotRegistered,
)
from protocols.statements import Envelope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Withdrawn:
    """A withdrawal as the coordinator carried it out: the data set (metadata kept), the
    jobs it cancelled or stopped, and whether each worker acknowledged it."""

    dataset: DatasetRecord
    cancelled_jobs: list[str]
    deliveries: list[DeliveryRecord]


class Datasets:
    """Takes in owners' data sets, shows each member the ones it may see, withdraws them."""

    def __init__(
        self, store: CoordinatorStore, blobs: BlobStore, delivery: WithdrawalDelivery
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.delivery = delivery

    def upload_dataset(
        self, caller: str, manifest: bytes, ciphertext: Iterable[bytes]
    ) -> DatasetRecord:
        """Check the signed manifest, then stream the ciphertext to the blob store.

        The ciphertext must hash to the manifest's ``ciphertext_sha256`` and
        have its ``ciphertext_size``, or nothing at all is stored. Only the
        owner uploads its data set.
        """
        envelope = Envelope.from_bytes(manifest, "dataset manifest")
        doc = DatasetManifest.verify(envelope)
        owner = doc.owner_key.hex
        if owner != caller:
            raise NotAllowed(
                f"data set {doc.dataset_id!r} is owned by {owner[:16]}…: only its owner uploads it"
            )
        if self.store.get_party_by_key(owner) is None:
            raise NotRegistered(
                f"the owner {owner[:16]}… of data set {doc.dataset_id!r} is not a registered "
                "party: run `detente party init` first"
            )
        if self.store.get_dataset(doc.dataset_id) is not None:
            raise AlreadyExists(
                f"data set {doc.dataset_id!r} already exists: choose another dataset id"
            )
        if self.store.partial_for_dataset(doc.dataset_id) is not None:
            raise AlreadyExists(
                f"data set {doc.dataset_id!r} has an unfinished upload: resume it "
                "(`detente party upload FILE --resume`) or choose another dataset id"
            )
        if doc.ciphertext_size < 0:
            raise InvalidRequest("the manifest's ciphertext_size is negative")
        try:
            sha256, size = self.blobs.put_stream(
                ciphertext,
                expected_sha256=doc.ciphertext_sha256,
                expected_size=doc.ciphertext_size,
                what=f"ciphertext of data set {doc.dataset_id!r}",
            )
        except IntegrityError as exc:
            raise IntegrityError(
                f"ciphertext does not match the signed manifest of data set "
                f"{doc.dataset_id!r} ({exc}); nothing was stored: re-run the upload"
            ) from None
        record = DatasetRecord(
            doc.dataset_id, owner, manifest, envelope.digest, sha256, size, now_ms()
        )
        try:
            self.store.add_dataset(
                record,
                Audit(
                    "dataset.uploaded",
                    doc.dataset_id,
                    {
                        "owner_key": owner,
                        "manifest_digest": envelope.digest,
                        "blob_sha256": sha256,
                        "size": size,
                    },
                ),
            )
        except AlreadyExists:
            # A concurrent upload took the id first; drop our copy unless shared.
            if not self.store.blob_referenced(sha256):
                self.blobs.delete(sha256)
            raise
        log.info("dataset uploaded: %s (%d bytes, owner %s…)", doc.dataset_id, size, owner[:16])
        return record

    def list_datasets(self, caller: str) -> list[DatasetRecord]:
        """The caller's own data sets and those named by jobs it takes part in."""
        visible = {
            dataset_id
            for job in self.store.list_jobs()
            if job.takes_part(caller)
            for dataset_id in job.dataset_ids
        }
        return [
            d
            for d in self.store.list_datasets()
            if d.owner_key == caller or d.dataset_id in visible
        ]

    def get_dataset(self, caller: str, dataset_id: str) -> DatasetRecord:
        """A data set's public metadata (its signed manifest) for a member who names its id.

        The id is what a data owner gives a proposer; knowing it lets a member
        name the data set in job terms, nothing more (the ciphertext goes only
        to the enclave).
        """
        record = self.store.get_dataset(dataset_id)
        if record is None:
            raise NotFound(
                f"no data set {dataset_id!r}: ask its owner for the id `detente party upload` "
                "printed"
            )
        return record

    def finish_withdrawals(self) -> None:
        """At start: delete the ciphertext of withdrawn data sets that a crash left on disk
        (the withdrawal is committed before its blob is deleted)."""
        for record in self.store.withdrawn_datasets():
            if self.blobs.path(record.blob_sha256).exists() and not self.store.blob_referenced(
                record.blob_sha256
            ):
                self.blobs.delete(record.blob_sha256)
                log.info(
                    "dataset %s: deleted the ciphertext a crash left behind", record.dataset_id
                )

    def withdraw_dataset(self, caller: str, dataset_id: str, withdrawal: bytes) -> Withdrawn:
        """The owner withdraws its data set (protocols/SPEC.md §3.11).

        The statement must be signed by the data set's owner (the key that
        signed its manifest), sent by that owner, and name this data set and
        manifest. Then, in one transaction, the data set is marked withdrawn
        (its public metadata stays), the jobs waiting on it are cancelled and a
        running one is stopped, with a reason naming the withdrawal, and the
        audit log records it; then its ciphertext is deleted and the statement
        is sent to every worker (coordinator.withdrawals). Withdrawing again
        changes nothing and reports the workers' acknowledgements so far.
        """
        record = self.store.get_dataset(dataset_id)
        if record is None:
            raise NotFound(f"no data set {dataset_id!r}: list yours with `detente party datasets`")
        if record.owner_key != caller:
            raise NotAllowed(
                f"data set {dataset_id!r} is owned by {record.owner_key[:16]}…: only its owner "
                "withdraws it"
            )
        envelope = Envelope.from_bytes(withdrawal, "dataset withdrawal")
        doc, _ = DatasetWithdrawal.verify(
            envelope, Envelope.from_bytes(record.manifest, "dataset manifest")
        )
        if envelope.signer.hex != caller:
            raise NotAllowed("a withdrawal is sent by the owner that signed it")
        record, cancelled, fresh = self.store.withdraw_dataset(
            dataset_id,
            withdrawal,
            Audit(
                "dataset.withdrawn",
                dataset_id,
                {
                    "owner_key": caller,
                    "manifest_digest": doc.manifest_digest,
                    "withdrawal_sha256": envelope.digest,
                    "blob_sha256": record.blob_sha256,
                },
            ),
        )
        if fresh:
            log.info("dataset withdrawn: %s (%d job(s) stopped)", dataset_id, len(cancelled))
        else:
            reason = withdrawal_reason(dataset_id)
            cancelled = [j.job_id for j in self.store.list_jobs() if j.cancel_reason == reason]
        # Also on a repeat: a crash may have come between the record and the deletion.
        if not self.store.blob_referenced(record.blob_sha256):
            self.blobs.delete(record.blob_sha256)
        self.delivery.deliver(dataset_id)
        return Withdrawn(record, cancelled, self.delivery.status(dataset_id))
