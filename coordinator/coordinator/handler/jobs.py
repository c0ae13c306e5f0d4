"""The job state machine as parties drive it: propose, approve or reject, see, cancel, retry,
outputs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from coordinator.blobs import BlobStore
from coordinator.limits import JobLimits
from coordinator.scheduler import Scheduler
from coordinator.store import (
    APPROVED,
    CANCELLED,
    FAILED,
    PROPOSED,
    REJECTED,
    ApprovalRecord,
    Audit,
    CoordinatorStore,
    JobRecord,
    now_ms,
)
from protocols import canonical, statements
from protocols.documents import (
    Approval,
    DatasetManifest,
    JobTerms,
    Rejection,
    ResultStatement,
    check_approvals,
    check_release,
)
from protocols.errors import (
    ConsentError,
    DetenteError,
    InvalidRequest,
    NotAllowed,
    NotFound,
    NotRegistered,
    WrongState,
)
from protocols.keys import VerifyKey
from protocols.statements import Envelope
from protocols.stream import CHUNK_SIZE

log = logging.getLogger(__name__)


class Jobs:
    """Jobs from proposal to outputs; approved jobs go to the scheduler.

    A party sees the jobs it takes part in (as proposer, data owner or
    recipient), as if no other job existed; outputs go to recipients only.
    """

    def __init__(
        self,
        store: CoordinatorStore,
        blobs: BlobStore,
        scheduler: Scheduler,
        limits: JobLimits,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.scheduler = scheduler
        self.limits = limits
        # Approvals of one job must not race each other past the completeness check.
        self._approve_lock = threading.Lock()

    def propose_job(self, caller: str, terms: bytes) -> JobRecord:
        """Check the terms (each rule below raises with what to do) and record the job."""
        envelope = Envelope.from_bytes(terms, "job terms")
        doc = JobTerms.verify(envelope)
        self._check_proposer(caller, doc)
        self._check_time(doc)
        dataset_ids, owners, rows = self._named_datasets(doc)
        self._check_work(doc, rows)
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

    def _check_proposer(self, caller: str, doc: JobTerms) -> None:
        if doc.proposer != caller:
            raise NotAllowed("job terms are proposed by the party that signed them")
        if self.store.get_party_by_key(doc.proposer) is None:
            raise NotRegistered(
                f"the proposer {doc.proposer[:16]}… of job {doc.job_id!r} is not a registered "
                "party: run `detente party init` first"
            )

    def _check_time(self, doc: JobTerms) -> None:
        if doc.expires_at <= time.time():
            raise InvalidRequest(f"job {doc.job_id!r} has already expired: propose it again")
        limit = self.limits.max_seconds
        if doc.max_seconds is not None and doc.max_seconds > limit:
            raise InvalidRequest(
                f"job {doc.job_id!r} asks for up to {doc.max_seconds} s, more than this "
                f"coordinator's limit of {limit} s per job: ask for less"
            )

    def _named_datasets(self, doc: JobTerms) -> tuple[list[str], list[str], int]:
        """The terms' data sets (each once, uploaded, with the manifest the terms name):
        their ids, their owners in order, and their rows in all."""
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
            if record.withdrawn_at is not None:
                raise WrongState(
                    f"data set {dataset_id!r} was withdrawn by its owner: no job may use it; "
                    f"propose job {doc.job_id!r} without it"
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
        return dataset_ids, owners, rows

    def _check_work(self, doc: JobTerms, rows: int) -> None:
        work = rows * doc.num_rounds
        if work > self.limits.max_work:
            raise InvalidRequest(
                f"job {doc.job_id!r} is too large for this coordinator: {doc.num_rounds} rounds "
                f"× {rows} rows = {work}, above its limit of {self.limits.max_work} "
                "(rounds × rows); use fewer rounds or ask the operator"
            )

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
            finished = job.state in (FAILED, CANCELLED, REJECTED)
            if finished or (job.state != PROPOSED and not already):
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

    def reject_job(self, caller: str, job_id: str, rejection: bytes) -> JobRecord:
        """A data owner refuses a proposed job (docs/protocol.md §4): rejected for good.

        Checked as an approval is: signed by the caller, a data owner of the job,
        over this job's terms. The signed rejection is kept for the parties to
        verify; the audit entry holds its digest, not its reason.
        """
        envelope = Envelope.from_bytes(rejection, "job rejection")
        doc = Rejection.verify(envelope)
        signer = envelope.signer.hex
        if signer != caller:
            raise NotAllowed("a rejection is sent by the party that signed it")
        # Under the approval lock: a rejection and the approval that completes the
        # consent cannot both win.
        with self._approve_lock:
            job = self.visible_job(caller, job_id)
            if signer not in job.required_approvers:
                raise NotAllowed(
                    f"{signer[:16]}… owns no data set of job {job_id!r}: only its data owners "
                    "reject it; a proposer withdraws its own job with `detente party cancel`"
                )
            if doc.job_id != job.job_id or doc.terms_digest != job.terms_digest:
                raise InvalidRequest(
                    f"the rejection is for job {doc.job_id!r} with terms digest "
                    f"{doc.terms_digest[:16]}…, not job {job_id!r}'s current terms "
                    f"({job.terms_digest[:16]}…): fetch the job and reject its terms"
                )
            detail = {
                "from": PROPOSED,
                "to": REJECTED,
                "by": signer,
                "terms_digest": doc.terms_digest,
                "rejection_sha256": envelope.digest,
            }
            audit = Audit("job.rejected", job_id, detail)
            rejected = self.store.reject_job(job_id, rejection, audit)
        log.info("job %s rejected by %s…", job_id, signer[:16])
        return rejected

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
        if job is None or not (job.takes_part(caller) or caller in self._queriers(job_id)):
            raise NotFound(
                f"no job {job_id!r} that you take part in: list yours with `detente party jobs`"
            )
        return job

    def _queriers(self, job_id: str) -> list[str]:
        """Who may query the model a job sealed (its id is the job's): they see the job's
        terms, which say their budgets and the answer's shape."""
        try:
            return self.store.get_model(job_id).queriers
        except NotFound:
            return []

    def get_job(self, caller: str, job_id: str) -> JobRecord:
        return self.visible_job(caller, job_id)

    def list_jobs(self, caller: str) -> list[JobRecord]:
        querying = {m.job_id for m in self.store.list_models() if caller in m.queriers}
        return [j for j in self.store.list_jobs() if j.takes_part(caller) or j.job_id in querying]

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
        for dataset_id in job.dataset_ids:
            record = self.store.get_dataset(dataset_id)
            if record is not None and record.withdrawn_at is not None:
                raise WrongState(
                    f"data set {dataset_id!r} of job {job_id!r} was withdrawn by its owner: "
                    "the job cannot run again"
                )
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
        if name == "model" and JobTerms.verify(Envelope.from_bytes(job.terms, "job terms")).sealed:
            raise NotAllowed(
                f"job {job_id!r} sealed its model in the enclave: it is released to no one, "
                f"not even its owners; a querier its terms name scores rows with "
                f"`detente party predict {job_id} FILE`"
            )
        if caller not in job.recipients:
            raise NotAllowed(
                f"you are not a recipient of job {job_id!r}: its outputs are not yours"
            )
        output = self.store.get_output(job_id, name)
        if caller not in _wrapped_to(job, name):
            raise NotAllowed(
                f"output {name!r} of job {job_id!r} is not released to you (each owner's "
                "predictions go to that owner only)"
            )
        return self.blobs.iter_chunks(output.blob_sha256, CHUNK_SIZE)


def _wrapped_to(job: JobRecord, name: str) -> set[str]:
    """Whose keys the result statement wraps output ``name`` to (empty if none says so).

    The coordinator reads the enclave's statement without checking its signature:
    this only spares a party a download it cannot decrypt; the parties verify
    the statement themselves.
    """
    if not job.result_statement:
        return set()
    try:
        envelope = Envelope.from_bytes(job.result_statement, "result statement")
        statement = ResultStatement.from_dict(canonical.loads(envelope.payload, "result"))
    except DetenteError:
        return set()
    return {key for o in statement.outputs if o.name == name for key in o.wrapped_keys}
