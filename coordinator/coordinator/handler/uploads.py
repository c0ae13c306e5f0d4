"""Resumable data set uploads (docs/protocol.md §3): begin, send from an offset, complete.

The owner begins an upload with its signed manifest and learns how many
ciphertext bytes the coordinator already holds for it (:meth:`Uploads.begin`);
it then streams the rest from there (:meth:`Uploads.send`). The coordinator
writes them to a temporary file in its blob folder, fsyncs it every
``ack_bytes`` bytes and records the synced count in its database — that count
is what it acknowledges, so a restart (or a machine crash) resumes from bytes
that are really on disk. When the last byte arrives the whole ciphertext is
checked against the manifest's size and SHA-256; only then does the data set
exist, in one transaction with its audit entry. A mismatch deletes the
partial upload: nothing half-written remains.

Until then the upload is a *partial upload*: never listed, never usable in job
terms, resumable only by the key that began it, and deleted (row and file)
after ``expiry_seconds`` without a new acknowledged byte.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from coordinator.blobs import PARTIAL_PREFIX, BlobStore, PartialWriter, ShortPartial
from coordinator.store import Audit, CoordinatorStore, DatasetRecord, PartialUpload, now_ms
from protocols.documents import DatasetManifest
from protocols.errors import (
    AlreadyExists,
    IntegrityError,
    InvalidRequest,
    NotAllowed,
    NotFound,
    NotRegistered,
    WrongState,
)
from protocols.statements import Envelope

log = logging.getLogger(__name__)

# An unfinished upload with no acknowledged byte for this long is deleted.
UPLOAD_EXPIRY_SECONDS = 24 * 3600
# The coordinator syncs and acknowledges a partial upload every this many bytes.
ACK_BYTES = 32 << 20


@dataclass(frozen=True)
class UploadState:
    """How far an upload is: ``received`` of ``size`` bytes; ``dataset`` once complete."""

    upload_id: str
    dataset_id: str
    received: int
    size: int
    expires_at: int  # Unix ms
    dataset: DatasetRecord | None = None


class Uploads:
    """Partial uploads: begun with a signed manifest, completed by their ciphertext."""

    def __init__(
        self,
        store: CoordinatorStore,
        blobs: BlobStore,
        expiry_seconds: int = UPLOAD_EXPIRY_SECONDS,
        ack_bytes: int = ACK_BYTES,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.expiry_ms = expiry_seconds * 1000
        self.ack_bytes = ack_bytes

    def _state(self, p: PartialUpload, received: int | None = None) -> UploadState:
        held = p.received if received is None else received
        return UploadState(
            p.upload_id, p.dataset_id, held, p.size, p.updated_at + self.expiry_ms, None
        )

    # -- begin ------------------------------------------------------------------

    def begin(self, caller: str, manifest: bytes) -> UploadState:
        """Begin (or find again) the caller's upload of the data set its manifest signs."""
        envelope = Envelope.from_bytes(manifest, "dataset manifest")
        doc = DatasetManifest.verify(envelope)
        owner, dataset_id = doc.owner_key.hex, doc.dataset_id
        if owner != caller:
            raise NotAllowed(
                f"data set {dataset_id!r} is owned by {owner[:16]}…: only its owner uploads it"
            )
        if self.store.get_party_by_key(owner) is None:
            raise NotRegistered(
                f"the owner {owner[:16]}… of data set {dataset_id!r} is not a registered "
                "party: run `detente party init` first"
            )
        self.expire()
        done = self.store.get_dataset(dataset_id)
        if done is not None:
            if (
                done.owner_key == caller
                and done.manifest_digest == envelope.digest
                and done.withdrawn_at is None
            ):
                # The upload completed, and its reply was lost: it is this very data set.
                return UploadState("", dataset_id, done.size, done.size, 0, done)
            raise AlreadyExists(
                f"data set {dataset_id!r} already exists: choose another dataset id"
            )
        found = self.store.partial_for_dataset(dataset_id)
        if found is not None and found.owner_key != caller:
            raise NotAllowed(
                f"data set {dataset_id!r} is being uploaded by another party: choose another "
                "dataset id"
            )
        if found is not None and found.manifest_digest == envelope.digest:
            log.info(
                "upload %s of %s resumed at %d bytes", found.upload_id, dataset_id, found.received
            )
            return self._state(found)
        if found is not None and not self.blobs.remove_partial(found.temp_name):
            raise WrongState(
                f"an earlier upload of data set {dataset_id!r} is still receiving bytes: "
                "stop it, or try again in a few seconds"
            )
        upload_id = secrets.token_hex(16)
        at = now_ms()
        partial = PartialUpload(
            upload_id,
            dataset_id,
            owner,
            manifest,
            envelope.digest,
            doc.ciphertext_size,
            0,
            PARTIAL_PREFIX + upload_id,
            at,
            at,
        )
        # The owner's new manifest (sealed afresh) replaces its unfinished one.
        self.store.add_partial(partial, replaces=found.upload_id if found else None)
        log.info("upload %s of %s begun (%d bytes)", upload_id, dataset_id, doc.ciphertext_size)
        return self._state(partial)

    # -- send -------------------------------------------------------------------

    def send(
        self, caller: str, upload_id: str, offset: int, ciphertext: Iterable[bytes]
    ) -> UploadState:
        """Write ``ciphertext`` from ``offset`` on; complete the data set at its last byte.

        A stream that ends early or breaks keeps (and acknowledges) what
        arrived. ``offset`` may be at most what the coordinator acknowledged.
        """
        partial = self._own(caller, upload_id)
        if offset < 0 or offset > partial.received:
            raise InvalidRequest(
                f"the coordinator holds {partial.received} bytes of upload {upload_id}: send "
                f"from there, not from {offset}"
            )
        what = f"ciphertext of data set {partial.dataset_id!r}"
        doc = DatasetManifest.verify(Envelope.from_bytes(partial.manifest, "dataset manifest"))

        def acknowledge(synced: int) -> None:
            self.store.set_received(upload_id, synced, now_ms())

        try:
            writer = PartialWriter(
                self.blobs,
                partial.temp_name,
                offset,
                doc.ciphertext_sha256,
                partial.size,
                acknowledge,
                what,
                self.ack_bytes,
            )
        except ShortPartial as exc:
            # The file lost bytes the database counted (deleted by hand): say what is left.
            self.store.set_received(upload_id, exc.held, now_ms())
            raise WrongState(
                f"the coordinator holds only {exc.held} bytes of upload {upload_id}: begin "
                "again and send from there (`detente party upload FILE --resume`)"
            ) from None
        try:
            for piece in ciphertext:
                writer.write(piece)
        except IntegrityError as exc:  # longer than the manifest says
            self._drop(partial)
            raise IntegrityError(f"{exc}; nothing was stored: upload the data set again") from None
        except BaseException:
            held = writer.suspend()
            log.info("upload %s interrupted at %d bytes (kept)", upload_id, held)
            raise
        if writer.size < partial.size:
            return self._state(partial, writer.suspend())
        return self._complete(partial, doc, writer)

    def _own(self, caller: str, upload_id: str) -> PartialUpload:
        partial = self.store.get_partial(upload_id)
        if partial is None:
            raise NotFound(
                f"no unfinished upload {upload_id!r}: it completed, expired or was replaced; "
                "begin the upload again"
            )
        if partial.owner_key != caller:
            raise NotAllowed(
                f"upload {upload_id!r} was begun by another party: only the owner of data set "
                f"{partial.dataset_id!r} resumes it"
            )
        return partial

    def _complete(
        self, partial: PartialUpload, doc: DatasetManifest, writer: PartialWriter
    ) -> UploadState:
        try:
            sha256, size = writer.commit()  # the whole ciphertext against the manifest
        except IntegrityError as exc:
            self._drop(partial)
            raise IntegrityError(
                f"the ciphertext does not match the signed manifest of data set "
                f"{partial.dataset_id!r} ({exc}); nothing was stored and the unfinished upload "
                "is deleted: upload the data set again (without --resume)"
            ) from None
        record = DatasetRecord(
            partial.dataset_id,
            partial.owner_key,
            partial.manifest,
            partial.manifest_digest,
            sha256,
            size,
            now_ms(),
        )
        detail = {
            "owner_key": partial.owner_key,
            "manifest_digest": partial.manifest_digest,
            "blob_sha256": sha256,
            "size": size,
        }
        try:
            self.store.complete_partial(
                partial.upload_id, record, Audit("dataset.uploaded", doc.dataset_id, detail)
            )
        except AlreadyExists:
            if not self.store.blob_referenced(sha256):
                self.blobs.delete(sha256)
            raise
        log.info(
            "dataset uploaded: %s (%d bytes, owner %s…, resumable upload %s)",
            partial.dataset_id,
            size,
            partial.owner_key[:16],
            partial.upload_id,
        )
        return UploadState(partial.upload_id, partial.dataset_id, size, size, 0, record)

    def _drop(self, partial: PartialUpload) -> None:
        self.blobs.remove_partial(partial.temp_name, unless_busy=False)
        self.store.delete_partial(partial.upload_id)

    # -- expiry -----------------------------------------------------------------

    def expire(self, now: int | None = None) -> int:
        """Delete partial uploads idle longer than the expiry (rows and files; a file a
        live stream holds stays), and files no row names (left by a crash). How many
        partial uploads were deleted."""
        at = now_ms() if now is None else now
        dropped = 0
        for partial in self.store.idle_partials(at - self.expiry_ms):
            if self.blobs.remove_partial(partial.temp_name):
                self.store.delete_partial(partial.upload_id)
                dropped += 1
                log.info(
                    "unfinished upload %s of %s expired", partial.upload_id, partial.dataset_id
                )
        # Files first: a partial's row is made before its file, so a file listed here
        # whose partial still exists is named by the rows read after.
        names = self.blobs.partial_names()
        known = {p.temp_name for p in self.store.list_partials()}
        for name in names:
            if name not in known:
                self.blobs.remove_partial(name)
        return dropped
