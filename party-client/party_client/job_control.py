"""Following jobs: fetch, list, wait for, cancel and retry them, each checked against its terms."""

from __future__ import annotations

import time
from dataclasses import dataclass

from party_client.home import PartyHome
from party_client.remote import Coordinator, RemoteEvent, RemoteJob, connected
from protocols.documents import JobTerms
from protocols.errors import DetenteError, IntegrityError
from protocols.statements import Envelope

FINISHED = ("succeeded", "failed", "cancelled")


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
