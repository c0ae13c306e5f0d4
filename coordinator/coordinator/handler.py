"""The coordinator's logic, between the thin gRPC servicer and the store.

Every check here is a convenience that gives a party a clear error early;
none of it is a security boundary, because the enclave verifies every
signature, digest and approval itself (DESIGN.md §1, §3.5). The handler
works with bytes and plain records only; it never sees plaintext.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator

from coordinator.blobs import CHUNK_SIZE, BlobStore
from coordinator.enclave_client import EnclaveClient, Evidence
from coordinator.errors import (
    AlreadyExists,
    EnclaveUnavailable,
    InvalidRequest,
    NotAllowed,
    NotFound,
    NotRegistered,
    WrongState,
)
from coordinator.scheduler import Scheduler
from coordinator.store import (
    PROPOSED,
    ApprovalRecord,
    Audit,
    CoordinatorStore,
    DatasetRecord,
    JobRecord,
    PartyRecord,
    now_ms,
)
from protocols import statements
from protocols.documents import Approval, DatasetManifest, JobTerms, Registration, check_approvals
from protocols.errors import ConsentError, IntegrityError
from protocols.keys import VerifyKey
from protocols.statements import Envelope

log = logging.getLogger(__name__)
NONCE_SIZE = 32


class CoordinatorHandler:
    """Registry, dataset intake, job state machine; hands approved jobs to the scheduler."""

    def __init__(
        self,
        store: CoordinatorStore,
        blobs: BlobStore,
        enclave: EnclaveClient | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.enclave = enclave
        self.scheduler = Scheduler(store, blobs, enclave)
        # Approvals of one job must not race each other past the completeness check.
        self._approve_lock = threading.Lock()

    def start(self) -> None:
        """Start the scheduler and re-queue jobs interrupted by a restart."""
        self.scheduler.start()
        self.scheduler.recover()

    def stop(self) -> None:
        self.scheduler.stop()

    # parties --------------------------------------------------------------

    def register_party(self, registration: bytes) -> PartyRecord:
        envelope = Envelope.from_bytes(registration, "party registration")
        reg = Registration.verify(envelope)
        key = reg.signing_key.hex
        existing = self.store.get_party_by_key(key)
        if existing is not None:
            if existing.name == reg.name and existing.hpke_key == reg.hpke_key.hex:
                return existing
            raise AlreadyExists(
                f"key {key[:16]}… is already registered as {existing.name!r} with other "
                "details; a key registers once"
            )
        by_name = self.store.get_party_by_name(reg.name)
        if by_name is not None:
            raise AlreadyExists(
                f"the name {reg.name!r} is already registered to another key: choose another "
                "name with `detente party init --name …`"
            )
        record = PartyRecord(reg.name, key, reg.hpke_key.hex, registration, now_ms())
        self.store.add_party(
            record,
            Audit(
                "party.registered",
                key,
                {
                    "name": reg.name,
                    "hpke_key": reg.hpke_key.hex,
                    "registration_sha256": envelope.digest,
                },
            ),
        )
        log.info("party registered: %s (%s…)", reg.name, key[:16])
        return record

    def list_parties(self) -> list[PartyRecord]:
        return self.store.list_parties()

    # evidence -------------------------------------------------------------

    def get_evidence(self, nonce: bytes) -> Evidence:
        if len(nonce) != NONCE_SIZE:
            raise InvalidRequest(
                f"an attestation nonce is {NONCE_SIZE} fresh random bytes, got {len(nonce)}"
            )
        if self.enclave is None:
            raise EnclaveUnavailable(
                "this coordinator has no enclave configured: start it with "
                "`detente coordinator serve --enclave HOST:PORT`"
            )
        return self.enclave.get_evidence(nonce)

    # datasets -------------------------------------------------------------

    def upload_dataset(self, manifest: bytes, ciphertext: Iterable[bytes]) -> DatasetRecord:
        """Check the signed manifest, then stream the ciphertext to the blob store.

        The ciphertext must hash to the manifest's ``ciphertext_sha256`` and
        have its ``ciphertext_size``, or nothing at all is stored.
        """
        envelope = Envelope.from_bytes(manifest, "dataset manifest")
        doc = DatasetManifest.verify(envelope)
        owner = doc.owner_key.hex
        if self.store.get_party_by_key(owner) is None:
            raise NotRegistered(
                f"the owner {owner[:16]}… of data set {doc.dataset_id!r} is not a registered "
                "party: run `detente party register` first"
            )
        if self.store.get_dataset(doc.dataset_id) is not None:
            raise AlreadyExists(
                f"data set {doc.dataset_id!r} already exists: choose another dataset id"
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

    def list_datasets(self) -> list[DatasetRecord]:
        return self.store.list_datasets()

    # jobs -----------------------------------------------------------------

    def propose_job(self, terms: bytes) -> JobRecord:
        envelope = Envelope.from_bytes(terms, "job terms")
        doc = JobTerms.verify(envelope)
        if self.store.get_party_by_key(doc.proposer) is None:
            raise NotRegistered(
                f"the proposer {doc.proposer[:16]}… of job {doc.job_id!r} is not a registered "
                "party: run `detente party register` first"
            )
        owners: list[str] = []
        dataset_ids: list[str] = []
        for dataset_id, digest in doc.datasets:
            if dataset_id in dataset_ids:
                raise InvalidRequest(f"job terms name data set {dataset_id!r} twice")
            record = self.store.get_dataset(dataset_id)
            if record is None:
                raise NotFound(
                    f"job {doc.job_id!r} names data set {dataset_id!r}, which was never "
                    "uploaded: upload it first with `detente party upload`"
                )
            if record.manifest_digest != digest:
                raise InvalidRequest(
                    f"job {doc.job_id!r} names data set {dataset_id!r} with manifest digest "
                    f"{digest[:16]}…, but its signed manifest has digest "
                    f"{record.manifest_digest[:16]}…: re-create the terms from the current "
                    "manifest"
                )
            dataset_ids.append(dataset_id)
            if record.owner_key not in owners:
                owners.append(record.owner_key)
        at = now_ms()
        job = JobRecord(
            job_id=doc.job_id,
            terms=terms,
            terms_digest=envelope.digest,
            proposer=doc.proposer,
            dataset_ids=dataset_ids,
            required_approvers=owners,
            state=PROPOSED,
            error="",
            created_at=at,
            updated_at=at,
        )
        self.store.add_job(
            job,
            Audit(
                "job.proposed",
                doc.job_id,
                {
                    "proposer": doc.proposer,
                    "terms_digest": envelope.digest,
                    "datasets": dataset_ids,
                    "required_approvers": owners,
                },
            ),
        )
        log.info("job proposed: %s (%d data sets)", doc.job_id, len(dataset_ids))
        return self.store.get_job(doc.job_id)

    def approve_job(self, job_id: str, approval: bytes) -> JobRecord:
        envelope = Envelope.from_bytes(approval, "job approval")
        doc = Approval.from_dict(
            statements.verify(envelope, statements.APPROVAL, None, "job approval")
        )
        signer = envelope.signer.hex
        with self._approve_lock:
            job = self.store.get_job(job_id)
            if signer not in job.required_approvers:
                raise NotAllowed(
                    f"{signer[:16]}… owns no data set of job {job_id!r}: only the data owners "
                    f"({', '.join(k[:16] + '…' for k in job.required_approvers)}) approve it"
                )
            if doc.job_id != job.job_id:
                raise InvalidRequest(f"the approval is for job {doc.job_id!r}, not job {job_id!r}")
            if doc.terms_digest != job.terms_digest:
                raise InvalidRequest(
                    f"the approval is over different job terms: terms digest "
                    f"{doc.terms_digest[:16]}… does not match job {job_id!r}'s terms digest "
                    f"{job.terms_digest[:16]}…; fetch the job and approve its current terms"
                )
            for existing in job.approvals:
                if existing.approver == signer:
                    return job  # approving twice is harmless
            if job.state != PROPOSED:
                raise WrongState(f"job {job_id!r} is {job.state}; it no longer takes approvals")
            complete = self._complete(job, envelope)
            self.store.add_approval(
                job_id,
                ApprovalRecord(signer, approval, now_ms()),
                Audit(
                    "approval.recorded",
                    job_id,
                    {
                        "approver": signer,
                        "terms_digest": doc.terms_digest,
                        "approval_sha256": envelope.digest,
                    },
                ),
                Audit("job.state", job_id) if complete else None,
            )
        log.info("job %s approved by %s…%s", job_id, signer[:16], " (complete)" if complete else "")
        if complete:
            self.scheduler.submit(job_id)
        return self.store.get_job(job_id)

    @staticmethod
    def _complete(job: JobRecord, new: Envelope) -> bool:
        envelopes = [Envelope.from_bytes(a.envelope, "job approval") for a in job.approvals]
        envelopes.append(new)
        try:
            check_approvals(
                Envelope.from_bytes(job.terms, "job terms"),
                {VerifyKey.from_hex(k) for k in job.required_approvers},
                envelopes,
            )
        except ConsentError:
            return False
        return True

    def get_job(self, job_id: str) -> JobRecord:
        return self.store.get_job(job_id)

    def list_jobs(self) -> list[JobRecord]:
        return self.store.list_jobs()

    def fetch_output(self, job_id: str, name: str) -> Iterator[bytes]:
        output = self.store.get_output(job_id, name)
        return self.blobs.iter_chunks(output.blob_sha256, CHUNK_SIZE)
