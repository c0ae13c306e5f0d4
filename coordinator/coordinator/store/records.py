"""The plain, frozen values the store hands the handler (ORM rows never leave the store)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Job states (docs/protocol.md §4): proposed → approved → running → succeeded | failed;
# a job not yet finished can be cancelled; a failed job can go back to approved (retry);
# a proposed job a data owner rejects is rejected for good.
PROPOSED = "proposed"
APPROVED = "approved"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
REJECTED = "rejected"
JOB_STATES = (PROPOSED, APPROVED, RUNNING, SUCCEEDED, FAILED, CANCELLED, REJECTED)
FINISHED_STATES = (SUCCEEDED, FAILED, CANCELLED, REJECTED)

# Sealed-model states (docs/protocol.md §7): sealed when its job succeeds, retired once
# the enclave destroyed it with every owner's signature. The coordinator's record is a
# convenience for parties; the enclave's own record decides whether a query is answered.
SEALED = "sealed"
RETIRED = "retired"
MODEL_STATES = (SEALED, RETIRED)


def now_ms() -> int:
    """Milliseconds since the epoch: the unit of every timestamp the store keeps."""
    return int(time.time() * 1000)


@dataclass(frozen=True)
class PartyRecord:
    name: str
    signing_key: str
    hpke_key: str
    registration: bytes
    registered_at: int


@dataclass(frozen=True)
class EnrollmentRecord:
    """A one-time token the operator issued for a party name (only its SHA-256 is kept)."""

    name: str
    token_sha256: str
    created_at: int
    expires_at: int
    used_at: int | None = None
    used_by: str | None = None


@dataclass(frozen=True)
class DatasetRecord:
    dataset_id: str
    owner_key: str
    manifest: bytes
    manifest_digest: str
    blob_sha256: str
    size: int
    created_at: int
    # Set when its owner withdrew it (protocols/SPEC.md §3.11): ms since the epoch, and
    # the owner's signed withdrawal. The blob is then deleted; the metadata stays.
    withdrawn_at: int | None = None
    withdrawal: bytes | None = None


@dataclass(frozen=True)
class DeliveryRecord:
    """Whether one enclave worker acknowledged a data set's withdrawal."""

    dataset_id: str
    worker: str  # the worker's address, as the coordinator knows it
    delivered_at: int | None  # ms since the epoch; None: not yet
    attempts: int
    error: str  # why the last attempt failed


@dataclass(frozen=True)
class ApprovalRecord:
    approver: str
    envelope: bytes
    at: int


@dataclass(frozen=True)
class StoredOutput:
    """An output of a finished job: its name and the blob holding its ciphertext."""

    name: str
    blob_sha256: str
    size: int


@dataclass(frozen=True)
class EventRecord:
    at: int
    kind: str
    text: str


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    terms: bytes
    terms_digest: str
    proposer: str
    dataset_ids: list[str]
    required_approvers: list[str]
    state: str
    error: str
    created_at: int
    updated_at: int
    result_statement: bytes | None = None
    approvals: list[ApprovalRecord] = field(default_factory=list)
    outputs: list[StoredOutput] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)  # hex signing keys, terms order
    attempts: int = 0
    started_at: int | None = None
    cancel_reason: str = ""
    rejection: bytes | None = None  # a data owner's signed rejection (rejection.v1)
    worker: str = ""  # HOST:PORT of the worker running it now, or that ran it last
    worker_losses: int = 0  # workers lost while running it since a party last acted

    def takes_part(self, key: str) -> bool:
        """Whether ``key`` is this job's proposer, one of its data owners or a recipient."""
        return key == self.proposer or key in self.required_approvers or key in self.recipients


@dataclass(frozen=True)
class RetirementRecord:
    """One owner's signed retirement of a sealed model, as received."""

    owner: str
    envelope: bytes
    at: int


@dataclass(frozen=True)
class QueryCount:
    """Queries of a sealed model the coordinator relayed for one querier, and their rows."""

    querier: str
    queries: int
    rows: int


@dataclass(frozen=True)
class ModelRecord:
    """A model sealed in the enclave: who owns it, who may query it, what was relayed.

    ``model_id`` is the id of the job that sealed it; ``owners`` are that job's
    data owners (who retire it), ``queriers`` the signing keys the terms let
    query it (hex, terms order).
    """

    model_id: str
    job_id: str
    terms_digest: str
    owners: list[str]
    queriers: list[str]
    state: str
    created_at: int
    retired_at: int | None = None
    retirements: list[RetirementRecord] = field(default_factory=list)
    queries: list[QueryCount] = field(default_factory=list)
    worker: str = ""  # the worker whose encrypted mount keeps it ("": before worker pools)

    def visible_to(self, key: str) -> bool:
        """Whether ``key`` is one of the model's owners or queriers."""
        return key in self.owners or key in self.queriers

    def unsigned_owners(self) -> list[str]:
        """The owners whose retirement the coordinator has not received, in owner order."""
        signed = {r.owner for r in self.retirements}
        return [o for o in self.owners if o not in signed]


# Worker health (docs/operations.md, worker pool): only a SERVING worker gets new jobs.
NOT_CHECKED = "not checked yet"
SERVING = "serving"
NOT_SERVING = "not serving"  # reachable and attested, but draining or unwell
UNREACHABLE = "unreachable"
NOT_TRUSTED = "refused by the policy"
WORKER_HEALTH = (NOT_CHECKED, SERVING, NOT_SERVING, UNREACHABLE, NOT_TRUSTED)


@dataclass(frozen=True)
class WorkerRecord:
    """An enclave worker of the pool as the coordinator last checked it.

    ``backend`` is SIMULATION, SGX or TDX from its last accepted evidence;
    ``mrenclave``/``mrsigner``/``tcb_status`` are from that evidence and
    ``attested_at`` is when it passed the coordinator's policy. ``slots``,
    ``busy``, ``job_ids`` and ``draining`` are what the worker last reported
    (GetStatus); ``last_seen`` is when it last answered at all.
    """

    address: str
    registered_at: int
    health: str = NOT_CHECKED
    problem: str = ""
    backend: str = ""
    mrenclave: str = ""
    mrsigner: str = ""
    tcb_status: str = ""
    attested_at: int | None = None
    slots: int = 0
    busy: int = 0
    job_ids: list[str] = field(default_factory=list)
    draining: bool = False
    last_seen: int | None = None
    checked_at: int | None = None

    @property
    def simulation(self) -> bool:
        return self.backend == "SIMULATION"
