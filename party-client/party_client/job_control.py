"""Following jobs: fetch, list, wait for, cancel, retry and reject them, each checked against its
terms."""

from __future__ import annotations

import time
from dataclasses import dataclass

from party_client.home import PartyHome
from party_client.remote import Coordinator, RemoteEvent, RemoteJob, connected
from protocols.documents import JobTerms, Rejection
from protocols.errors import DetenteError, IntegrityError
from protocols.statements import Envelope

FINISHED = ("succeeded", "failed", "cancelled", "rejected")


@dataclass(frozen=True)
class RejectionView:
    """A data owner's signed rejection of a job, verified: who (hex key) and why.

    ``reason`` is the rejecting party's own text: show it as untrusted text
    (escaped, never interpreted as markup)."""

    by: str
    reason: str


@dataclass(frozen=True)
class JobView:
    """A job as fetched once: its verified terms envelope and the coordinator's bookkeeping."""

    job_id: str
    state: str
    envelope: Envelope
    terms: JobTerms
    required_approvers: list[str]
    approvers: list[str]  # hex keys whose approvals the coordinator lists
    events: list[RemoteEvent]
    error: str
    attempts: int
    result_statement: bytes
    rejection: RejectionView | None = None

    @property
    def terms_digest(self) -> str:
        return self.envelope.digest


def job_view(job: RemoteJob, job_id: str) -> JobView:
    """Verify a job the coordinator returned: terms signed by their proposer, for ``job_id``."""
    envelope = Envelope.from_bytes(job.terms, "job terms")
    terms = JobTerms.verify(envelope)
    if terms.job_id != job_id or job.job_id != job_id:
        raise IntegrityError(
            f"the coordinator returned terms of job {terms.job_id!r}, not {job_id!r}"
        )
    approvers = []
    for approval in job.approvals:
        try:
            approvers.append(Envelope.from_bytes(approval, "job approval").signer.hex)
        except DetenteError:
            continue
    return JobView(
        rejection=_rejection(job, envelope.digest) if job.rejection else None,
        job_id=job_id,
        state=job.state,
        envelope=envelope,
        terms=terms,
        required_approvers=job.required_approvers,
        approvers=approvers,
        events=job.events,
        error=job.error,
        attempts=job.attempts,
        result_statement=job.result_statement,
    )


def _rejection(job: RemoteJob, terms_digest: str) -> RejectionView:
    """The job's rejection, verified: signed by one of its data owners over these terms."""
    envelope = Envelope.from_bytes(job.rejection, "job rejection")
    try:
        doc = Rejection.verify(envelope)
    except DetenteError as exc:
        raise IntegrityError(
            f"the coordinator shows job {job.job_id!r} with a rejection that does not verify "
            f"({exc}): do not trust this coordinator's account of the job"
        ) from None
    by = envelope.signer.hex
    if by not in job.required_approvers or (doc.job_id, doc.terms_digest) != (
        job.job_id,
        terms_digest,
    ):
        raise IntegrityError(
            f"the coordinator shows job {job.job_id!r} rejected by {by[:16]}…, whose rejection "
            "is not a data owner's of these very terms: do not trust this coordinator's account"
        )
    return RejectionView(by, doc.reason)


def fetch_job(home: PartyHome, job_id: str, *, remote: Coordinator | None = None) -> JobView:
    """Fetch a job once and verify its terms (signed by their proposer)."""
    with connected(home, remote) as coordinator:
        return job_view(coordinator.job(job_id), job_id)


def jobs(home: PartyHome, *, remote: Coordinator | None = None) -> list[JobView]:
    """The jobs this party takes part in (as proposer, data owner or recipient)."""
    with connected(home, remote) as coordinator:
        listed = coordinator.jobs()
    return [job_view(j, j.job_id) for j in listed]


def cancel(
    home: PartyHome, job_id: str, reason: str = "", *, remote: Coordinator | None = None
) -> JobView:
    with connected(home, remote) as coordinator:
        return job_view(coordinator.cancel(job_id, reason), job_id)


def reject(
    home: PartyHome, job_id: str, reason: str, *, remote: Coordinator | None = None
) -> JobView:
    """Sign this data owner's rejection of the job's current terms, with ``reason``; the job
    is rejected for good. Refused (by the coordinator) to anyone who owns none of its data
    sets, or once it is no longer proposed."""
    from protocols.documents import check_reason
    from protocols.errors import FormatError, SetupError

    try:
        check_reason(reason)
    except FormatError as exc:
        raise SetupError(f"{exc}; nothing was rejected") from None
    with connected(home, remote) as coordinator:
        job = job_view(coordinator.job(job_id), job_id)
        signed = Rejection(job_id, job.terms_digest, reason).sign(home.signing_key())
        return job_view(coordinator.reject(job_id, signed.to_bytes()), job_id)


def retry(home: PartyHome, job_id: str, *, remote: Coordinator | None = None) -> JobView:
    with connected(home, remote) as coordinator:
        return job_view(coordinator.retry(job_id), job_id)


def wait(
    home: PartyHome, job_id: str, timeout: float, *, remote: Coordinator | None = None
) -> JobView:
    """The job once it has finished, or as it is after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with connected(home, remote) as coordinator:
        while True:
            job = job_view(coordinator.job(job_id), job_id)
            if job.state in FINISHED or time.monotonic() > deadline:
                return job
            time.sleep(0.2)
