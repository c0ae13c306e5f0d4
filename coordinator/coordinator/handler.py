"""The coordinator's logic, between the thin gRPC servicer and the store.

Every check here is a convenience that gives a party a clear error early;
none of it is a security boundary, because the enclave verifies every
signature, digest and approval itself (DESIGN.md §1, §3.5). The handler
works with bytes and plain records only; it never sees plaintext.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from coordinator.blobs import BlobStore
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
    APPROVED,
    CANCELLED,
    FAILED,
    PROPOSED,
    ApprovalRecord,
    Audit,
    CoordinatorStore,
    DatasetRecord,
    EnrollmentRecord,
    JobRecord,
    PartyRecord,
    now_ms,
)
from protocols import statements
from protocols.documents import (
    Approval,
    DatasetManifest,
    JobTerms,
    Registration,
    check_approvals,
    check_release,
)
from protocols.errors import ConsentError, IntegrityError
from protocols.keys import VerifyKey
from protocols.statements import Envelope
from protocols.stream import CHUNK_SIZE

log = logging.getLogger(__name__)
NONCE_SIZE = 32
ENROLLMENT_TTL = 7 * 24 * 3600


@dataclass(frozen=True)
class JobLimits:
    """The operator's ceilings on one job (``detente coordinator serve --max-…``).

    ``max_seconds`` bounds how long a job may hold an enclave (terms may ask for
    less, never more); ``max_work`` bounds rounds × rows, the size of the
    training, checked when a job is proposed.
    """

    max_seconds: int = 3600
    max_work: int = 10_000_000_000

    def seconds_for(self, terms: JobTerms) -> int:
        asked = terms.max_seconds
        return self.max_seconds if asked is None else min(asked, self.max_seconds)


def issue_enrollment(
    store: CoordinatorStore, name: str, ttl_seconds: int = ENROLLMENT_TTL
) -> tuple[str, EnrollmentRecord]:
    """Make a one-time enrollment token for ``name``; only its SHA-256 is stored.

    Returns the token (shown once to the operator, who hands it to the party)
    and its record.
    """
    from protocols.documents import check_id

    check_id(name, "party name")
    if ttl_seconds < 1:
        raise InvalidRequest("an enrollment token must be valid for at least one second")
    token = secrets.token_urlsafe(24)
    at = now_ms()
    record = EnrollmentRecord(
        name, _token_sha256(token), created_at=at, expires_at=at + ttl_seconds * 1000
    )
    store.add_enrollment(
        record, Audit("party.enrollment_issued", name, {"expires_at": record.expires_at})
    )
    return token, record


def _token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class CoordinatorHandler:
    """Registry, dataset intake, job state machine; hands approved jobs to the scheduler.

    Every method that reads or changes a party's data takes the ``caller``: the
    key that signed the request (checked by :mod:`coordinator.auth`). A party
    sees its own data sets, the jobs it takes part in (as proposer, data owner
    or recipient) and the public metadata of a data set whose id it names;
    outputs go to recipients only.
    """

    def __init__(
        self,
        store: CoordinatorStore,
        blobs: BlobStore,
        enclave: EnclaveClient | None = None,
        limits: JobLimits | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.enclave = enclave
        self.limits = limits or JobLimits()
        self.scheduler = Scheduler(store, blobs, enclave, self.limits)
        # Approvals of one job must not race each other past the completeness check.
        self._approve_lock = threading.Lock()

    def start(self) -> None:
        """Start the scheduler and re-queue jobs interrupted by a restart."""
        self.scheduler.start()
        self.scheduler.recover()

    def stop(self) -> None:
        self.scheduler.stop()

    # parties --------------------------------------------------------------

    def register_party(self, registration: bytes, enrollment_token: str = "") -> PartyRecord:
        """Register a party with the one-time token the operator issued for its name.

        Registering again with the same name and keys (``detente party init``
        re-run) needs no token.
        """
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
        if not enrollment_token:
            raise NotAllowed(
                f"registering {reg.name!r} needs an enrollment token: ask the coordinator's "
                f"operator to run `detente coordinator enroll --name {reg.name}` and pass the "
                "token to `detente party init --enrollment-token TOKEN`"
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
            _token_sha256(enrollment_token),
        )
        log.info("party registered: %s (%s…)", reg.name, key[:16])
        return record

    def list_parties(self, caller: str) -> list[PartyRecord]:
        """The consortium's members (names and public keys): every member may see them,
        since naming recipients needs them."""
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

    # jobs -----------------------------------------------------------------

    def propose_job(self, caller: str, terms: bytes) -> JobRecord:
        envelope = Envelope.from_bytes(terms, "job terms")
        doc = JobTerms.verify(envelope)
        if doc.proposer != caller:
            raise NotAllowed("job terms are proposed by the party that signed them")
        if self.store.get_party_by_key(doc.proposer) is None:
            raise NotRegistered(
                f"the proposer {doc.proposer[:16]}… of job {doc.job_id!r} is not a registered "
                "party: run `detente party init` first"
            )
        if doc.expires_at <= time.time():
            raise InvalidRequest(f"job {doc.job_id!r} has already expired: propose it again")
        limit = self.limits.max_seconds
        if doc.max_seconds is not None and doc.max_seconds > limit:
            raise InvalidRequest(
                f"job {doc.job_id!r} asks for up to {doc.max_seconds} s, more than this "
                f"coordinator's limit of {limit} s per job: ask for less"
            )
        owners: list[str] = []
        dataset_ids: list[str] = []
        rows = 0
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
            rows += DatasetManifest.verify(
                Envelope.from_bytes(record.manifest, "dataset manifest")
            ).row_count
        work = rows * doc.num_rounds
        if work > self.limits.max_work:
            raise InvalidRequest(
                f"job {doc.job_id!r} is too large for this coordinator: {doc.num_rounds} rounds "
                f"× {rows} rows = {work}, above its limit of {self.limits.max_work} "
                "(rounds × rows); use fewer rounds or ask the operator"
            )
        try:
            check_release(doc, {VerifyKey.from_hex(k) for k in owners})
        except ConsentError as exc:
            raise InvalidRequest(str(exc)) from None
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
            recipients=[r.signing_key.hex for r in doc.recipients],
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

    def approve_job(self, caller: str, job_id: str, approval: bytes) -> JobRecord:
        envelope = Envelope.from_bytes(approval, "job approval")
        doc = Approval.from_dict(
            statements.verify(envelope, statements.APPROVAL, None, "job approval")
        )
        signer = envelope.signer.hex
        if signer != caller:
            raise NotAllowed("an approval is sent by the party that signed it")
        with self._approve_lock:
            job = self.visible_job(caller, job_id)
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
            already = any(existing.approver == signer for existing in job.approvals)
            if job.state in (FAILED, CANCELLED) or (job.state != PROPOSED and not already):
                hint = (
                    f"; its proposer can run it again with `detente party retry {job_id}`"
                    if job.state == FAILED
                    else ""
                )
                raise WrongState(
                    f"job {job_id!r} is {job.state}; it no longer takes approvals{hint}"
                )
            if already:
                return job  # approving twice is harmless
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

    def visible_job(self, caller: str, job_id: str) -> JobRecord:
        """The job if ``caller`` takes part in it; NotFound otherwise (as if it did not exist)."""
        try:
            job = self.store.get_job(job_id)
        except NotFound:
            job = None
        if job is None or not job.takes_part(caller):
            raise NotFound(
                f"no job {job_id!r} that you take part in: list yours with `detente party jobs`"
            )
        return job

    def get_job(self, caller: str, job_id: str) -> JobRecord:
        return self.visible_job(caller, job_id)

    def list_jobs(self, caller: str) -> list[JobRecord]:
        return [j for j in self.store.list_jobs() if j.takes_part(caller)]

    def cancel_job(self, caller: str, job_id: str, reason: str) -> JobRecord:
        """The proposer cancels a job that has not finished (the operator uses the CLI)."""
        job = self.visible_job(caller, job_id)
        if caller != job.proposer:
            raise NotAllowed(
                f"only the proposer of job {job_id!r} cancels it; a data owner who no longer "
                "agrees simply does not approve it"
            )
        cancelled = self.store.request_cancel(job_id, reason[:500], by="the proposer")
        log.info("job %s: cancel requested by its proposer", job_id)
        return cancelled

    def retry_job(self, caller: str, job_id: str) -> JobRecord:
        """Run a failed job again with the same terms and approvals (proposer only).

        The terms are unchanged, so the approvals still cover them; the enclave
        checks them again, and resumes from the checkpoint of the failed run.
        """
        job = self.visible_job(caller, job_id)
        if caller != job.proposer:
            raise NotAllowed(f"only the proposer of job {job_id!r} retries it")
        if job.state != FAILED:
            raise WrongState(f"job {job_id!r} is {job.state}; only a failed job is retried")
        terms = JobTerms.verify(Envelope.from_bytes(job.terms, "job terms"))
        if terms.expires_at <= time.time():
            raise WrongState(
                f"the terms of job {job_id!r} expired at {terms.expires_at}: propose a new job"
            )
        if not self.store.transition(
            job_id,
            [FAILED],
            APPROVED,
            f"approved (retry requested by the proposer after attempt {job.attempts})",
            audit_detail={"retry": True, "after_attempt": job.attempts},
        ):
            raise WrongState(
                f"job {job_id!r} changed state; look again with `detente party status`"
            )
        log.info("job %s: retry requested by its proposer", job_id)
        self.scheduler.submit(job_id)
        return self.store.get_job(job_id)

    def fetch_output(self, caller: str, job_id: str, name: str) -> Iterator[bytes]:
        job = self.visible_job(caller, job_id)
        if caller not in job.recipients:
            raise NotAllowed(
                f"you are not a recipient of job {job_id!r}: its outputs are not yours"
            )
        output = self.store.get_output(job_id, name)
        return self.blobs.iter_chunks(output.blob_sha256, CHUNK_SIZE)
