"""The data the dashboard's pages and its JSON API serve, read from the store.

Each view picks public fields one by one: names, public keys, ids, counts,
sizes, digests, states, times and the signed terms' plain words. Never a
manifest's wrapped key, an output's ciphertext, a signed envelope or a token.
Times are milliseconds since the epoch, as the store keeps them.

Training progress is what the enclave streams to the coordinator in the
clear: "round N/M" events (enclave_worker.jobs.training) and, only for terms
with live metrics, "metric" events (dashboard.curves). Otherwise the metrics
are encrypted to the job's recipients, so the coordinator cannot chart them;
the views say so instead of inventing a curve.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Any

from pydantic import BaseModel, Field

from coordinator.dashboard.audit_check import AuditChainCheck
from coordinator.dashboard.curves import ENCRYPTED_NOTE, LIVE_NOTE, MetricSeries, metric_series
from coordinator.store import (
    FINISHED_STATES,
    AuditEntry,
    CoordinatorStore,
    DatasetRecord,
    JobRecord,
    ModelRecord,
    WorkerRecord,
)
from protocols import canonical
from protocols.documents import DatasetManifest, JobTerms, Rejection, ResultStatement
from protocols.errors import DetenteError
from protocols.statements import Envelope

ROUND_EVENT = re.compile(r"^round (\d+)/(\d+)$")
AUDIT_PAGE = 200


class Enclave(BaseModel):
    """An enclave worker of the pool as the coordinator last checked it: its RA-TLS
    certificate against the enclave policy, its gRPC health service and GetStatus."""

    address: str
    health: str = Field(
        description="serving, not serving (draining), unreachable, refused by the policy, or "
        "not checked yet; only a serving worker gets new jobs"
    )
    backend: str = Field(description="SIMULATION, SGX or TDX, from its last accepted evidence")
    simulation: bool
    mrenclave: str
    mrsigner: str
    tcb_status: str
    last_attested_at: int | None
    last_checked_at: int | None
    last_seen: int | None = Field(description="when it last answered a check")
    problem: str
    policy_allows_simulation: bool
    slots: int = Field(description="jobs it runs at once, as it last reported")
    busy: int = Field(description="jobs it ran when last checked")
    draining: bool
    current_jobs: list[str] = Field(description="jobs the coordinator runs on it now")


class Dataset(BaseModel):
    dataset_id: str
    name: str
    owner: str = Field(description="the owner's party name (or its key if unregistered)")
    owner_key: str
    rows: int
    ciphertext_size: int
    schema_sha256: str
    columns: int | None = Field(description="number of columns, if the manifest shows its schema")
    created_at: int
    withdrawn: bool


class Party(BaseModel):
    name: str
    signing_key: str
    registered_at: int
    datasets: list[Dataset]


class Approval(BaseModel):
    party: str
    key: str
    approved: bool
    at: int | None


class JobRejection(BaseModel):
    party: str
    key: str
    reason: str = Field(description="the rejecting party's own text: untrusted, shown escaped")


class TermsDataset(BaseModel):
    dataset_id: str
    owner: str
    rows: int | None


class Querier(BaseModel):
    name: str
    total_rows: int
    rows_per_day: int | None


class ProgressPoint(BaseModel):
    seconds: float = Field(description="seconds since the job started")
    round: int


class JobEvent(BaseModel):
    at: int
    kind: str
    text: str


class ReleasedOutput(BaseModel):
    name: str
    size: int = Field(description="bytes of ciphertext (encrypted to the recipients)")


class JobSummary(BaseModel):
    job_id: str
    state: str
    proposer: str
    objective: str
    datasets: list[str]
    approved: int
    approvers: int
    rounds_done: int
    rounds: int
    created_at: int
    duration_seconds: float | None


class Job(JobSummary):
    join: str
    label: str
    params: dict[str, Any]
    seed: int
    outputs: list[str]
    release_to: str
    recipients: list[str]
    model: str = Field(description="release (encrypted to the recipients) or sealed")
    queriers: list[Querier]
    terms_datasets: list[TermsDataset]
    approvals: list[Approval]
    error: str
    cancel_reason: str
    rejection: JobRejection | None = Field(
        default=None, description="a data owner's signed rejection, checked here"
    )
    attempts: int
    started_at: int | None
    worker: str = Field(description="the worker running it now, or that ran it last")
    worker_losses: int = Field(description="workers lost while running it (each re-queued it)")
    updated_at: int
    expires_at: int
    max_seconds: int | None
    released: list[ReleasedOutput]
    progress: list[ProgressPoint]
    live_metrics: bool = Field(description="the terms let the enclave report metrics in the clear")
    metrics: list[MetricSeries] = Field(description="each live metric's curve (live terms only)")
    metrics_note: str
    events: list[JobEvent]


class QuerierUse(BaseModel):
    name: str
    key: str
    total_rows: int | None
    rows_per_day: int | None
    relayed_queries: int
    relayed_rows: int
    remaining_by_coordinator_count: int | None = Field(
        description="total_rows less the rows the coordinator relayed; the enclave keeps the "
        "budget that decides, and may count differently (refused or failed queries)"
    )


class Model(BaseModel):
    model_id: str
    job_id: str
    state: str
    owners: list[str]
    retired_by: list[str]
    not_retired_by: list[str]
    created_at: int
    retired_at: int | None
    queriers: list[QuerierUse]


class AuditRow(BaseModel):
    seq: int
    at: int
    event: str
    subject: str
    detail: dict[str, Any]
    hash: str


class AuditLog(BaseModel):
    intact: bool
    problem: str
    entries: int
    head: str
    shown: list[AuditRow]


class Overview(BaseModel):
    enclaves: list[Enclave]
    simulation: bool
    parties: int
    datasets: int
    jobs_by_state: dict[str, int]
    models: int
    audit_intact: bool


class Views:
    """Builds the dashboard's views from the store (read-only) and the enclave monitor."""

    def __init__(self, store: CoordinatorStore, policy_allows_simulation: bool) -> None:
        self._store = store
        self._allows_simulation = policy_allows_simulation
        self._chain = AuditChainCheck(store)
        self._lock = threading.Lock()
        # Verified documents by digest: verifying a signature on every refresh is wasted work.
        self._terms: OrderedDict[str, JobTerms | None] = OrderedDict()
        self._manifests: OrderedDict[str, DatasetManifest | None] = OrderedDict()

    # -- parsing, cached ---------------------------------------------------------------
    def _cached(self, cache: OrderedDict[str, Any], key: str, make: Any) -> Any:
        with self._lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
        try:
            value = make()
        except DetenteError:
            value = None  # shown as unreadable rather than failing the page
        with self._lock:
            cache[key] = value
            while len(cache) > 4096:
                cache.popitem(last=False)
        return value

    def terms(self, job: JobRecord) -> JobTerms | None:
        return self._cached(
            self._terms,
            job.terms_digest,
            lambda: JobTerms.verify(Envelope.from_bytes(job.terms, "job terms")),
        )

    def manifest(self, record: DatasetRecord) -> DatasetManifest | None:
        return self._cached(
            self._manifests,
            record.manifest_digest,
            lambda: DatasetManifest.verify(Envelope.from_bytes(record.manifest, "manifest")),
        )

    def _names(self) -> dict[str, str]:
        return {p.signing_key: p.name for p in self._store.list_parties()}

    # -- enclaves ----------------------------------------------------------------------
    def workers(self) -> list[WorkerRecord]:
        return self._store.list_workers()

    def simulation(self) -> bool:
        """Whether a SIMULATION banner applies: a worker attested as simulated, or one
        not attested yet under a policy that accepts simulated evidence."""
        return any(
            w.simulation or (w.attested_at is None and self._allows_simulation)
            for w in self.workers()
        )

    def enclaves(self) -> list[Enclave]:
        return [
            Enclave(
                address=w.address,
                health=w.health,
                backend=w.backend,
                simulation=w.simulation,
                mrenclave=w.mrenclave,
                mrsigner=w.mrsigner,
                tcb_status=w.tcb_status,
                last_attested_at=w.attested_at,
                last_checked_at=w.checked_at,
                last_seen=w.last_seen,
                problem=w.problem,
                policy_allows_simulation=self._allows_simulation,
                slots=w.slots,
                busy=w.busy,
                draining=w.draining,
                current_jobs=self._store.jobs_on_worker(w.address),
            )
            for w in self.workers()
        ]

    # -- parties and data sets ---------------------------------------------------------
    def datasets(self, names: dict[str, str] | None = None) -> list[Dataset]:
        names = self._names() if names is None else names
        out = []
        for record in self._store.list_datasets():
            manifest = self.manifest(record)
            out.append(
                Dataset(
                    dataset_id=record.dataset_id,
                    name=manifest.name if manifest else "",
                    owner=names.get(record.owner_key, record.owner_key[:16]),
                    owner_key=record.owner_key,
                    rows=manifest.row_count if manifest else 0,
                    ciphertext_size=record.size,
                    schema_sha256=manifest.schema_sha256 if manifest else "",
                    columns=len(manifest.public_schema)
                    if manifest and manifest.public_schema is not None
                    else None,
                    created_at=record.created_at,
                    withdrawn=record.withdrawn_at is not None,
                )
            )
        return out

    def parties(self) -> list[Party]:
        names = self._names()
        datasets = self.datasets(names)
        return [
            Party(
                name=p.name,
                signing_key=p.signing_key,
                registered_at=p.registered_at,
                datasets=[d for d in datasets if d.owner_key == p.signing_key],
            )
            for p in self._store.list_parties()
        ]

    # -- jobs --------------------------------------------------------------------------
    def _summary_fields(self, job: JobRecord, names: dict[str, str]) -> dict[str, Any]:
        terms = self.terms(job)
        approved = {a.approver for a in job.approvals}
        points = progress(job)
        end = job.updated_at if job.state in FINISHED_STATES else None
        duration = None
        if job.started_at is not None:
            from coordinator.store import now_ms

            duration = ((end or now_ms()) - job.started_at) / 1000
        return {
            "job_id": job.job_id,
            "state": job.state,
            "proposer": names.get(job.proposer, job.proposer[:16]),
            "objective": terms.objective if terms else "(terms unreadable)",
            "datasets": list(job.dataset_ids),
            "approved": len(approved & set(job.required_approvers)),
            "approvers": len(job.required_approvers),
            "rounds_done": points[-1].round if points else 0,
            "rounds": terms.num_rounds if terms else 0,
            "created_at": job.created_at,
            "duration_seconds": duration,
        }

    def jobs(self) -> list[JobSummary]:
        names = self._names()
        jobs = sorted(self._store.list_jobs(), key=lambda j: j.created_at, reverse=True)
        return [JobSummary(**self._summary_fields(j, names)) for j in jobs]

    def job(self, job_id: str) -> Job:
        """Raises NotFound if there is no such job."""
        names = self._names()
        job = self._store.get_job(job_id)
        terms = self.terms(job)
        rows = {d.dataset_id: d for d in self.datasets(names)}
        by_approver = {a.approver: a for a in job.approvals}
        return Job(
            **self._summary_fields(job, names),
            join=terms.join if terms else "",
            label=terms.label if terms else "",
            params=dict(terms.params) if terms else {},
            seed=terms.seed if terms else 0,
            outputs=list(terms.outputs) if terms else [],
            release_to=terms.release_to if terms else "",
            recipients=[r.name for r in terms.recipients] if terms else [],
            model=terms.model if terms else "",
            queriers=[
                Querier(name=q.name, total_rows=q.total, rows_per_day=q.per_day)
                for q in terms.queriers
            ]
            if terms
            else [],
            terms_datasets=[
                TermsDataset(
                    dataset_id=d,
                    owner=rows[d].owner if d in rows else "",
                    rows=rows[d].rows if d in rows else None,
                )
                for d, _ in (terms.datasets if terms else [])
            ],
            approvals=[
                Approval(
                    party=names.get(key, key[:16]),
                    key=key,
                    approved=key in by_approver,
                    at=by_approver[key].at if key in by_approver else None,
                )
                for key in job.required_approvers
            ],
            error=job.error,
            cancel_reason=job.cancel_reason,
            rejection=_rejection(job, names),
            attempts=job.attempts,
            started_at=job.started_at,
            worker=job.worker,
            worker_losses=job.worker_losses,
            updated_at=job.updated_at,
            expires_at=terms.expires_at if terms else 0,
            max_seconds=terms.max_seconds if terms else None,
            released=[ReleasedOutput(name=o.name, size=o.size) for o in job.outputs],
            progress=progress(job),
            live_metrics=bool(terms and terms.live_metrics),
            metrics=metric_series(job) if terms and terms.live_metrics else [],
            metrics_note=LIVE_NOTE if terms and terms.live_metrics else ENCRYPTED_NOTE,
            events=[JobEvent(at=e.at, kind=e.kind, text=e.text) for e in job.events],
        )

    # -- sealed models -----------------------------------------------------------------
    def models(self) -> list[Model]:
        names = self._names()
        jobs = {j.job_id: j for j in self._store.list_jobs()}
        return [self._model(m, names, jobs.get(m.job_id)) for m in self._store.list_models()]

    def _model(self, model: ModelRecord, names: dict[str, str], job: JobRecord | None) -> Model:
        terms = self.terms(job) if job is not None else None
        budgets = {q.signing_key.hex: q for q in terms.queriers} if terms else {}
        counts = {q.querier: q for q in model.queries}
        signed = [r.owner for r in model.retirements]
        queriers = []
        for key in model.queriers:
            budget, count = budgets.get(key), counts.get(key)
            relayed = count.rows if count else 0
            queriers.append(
                QuerierUse(
                    name=budget.name if budget else names.get(key, key[:16]),
                    key=key,
                    total_rows=budget.total if budget else None,
                    rows_per_day=budget.per_day if budget else None,
                    relayed_queries=count.queries if count else 0,
                    relayed_rows=relayed,
                    remaining_by_coordinator_count=max(budget.total - relayed, 0)
                    if budget
                    else None,
                )
            )
        return Model(
            model_id=model.model_id,
            job_id=model.job_id,
            state=model.state,
            owners=[names.get(o, o[:16]) for o in model.owners],
            retired_by=[names.get(o, o[:16]) for o in signed],
            not_retired_by=[names.get(o, o[:16]) for o in model.unsigned_owners()],
            created_at=model.created_at,
            retired_at=model.retired_at,
            queriers=queriers,
        )

    # -- audit log ---------------------------------------------------------------------
    def audit(self, limit: int = AUDIT_PAGE) -> AuditLog:
        chain = self._chain.check()  # only what was appended since the last check is hashed
        shown: list[AuditEntry] = []
        if limit > 0 and chain.last_seq:
            shown = self._store.audit_entries(max(1, chain.last_seq - limit + 1))[-limit:][::-1]
        return AuditLog(
            intact=chain.intact,
            problem=chain.problem,
            entries=chain.entries,
            head=chain.head,
            shown=[
                AuditRow(
                    seq=e.seq,
                    at=e.at,
                    event=e.event,
                    subject=e.subject,
                    detail=e.detail,
                    hash=e.hash,
                )
                for e in shown
            ],
        )

    def overview(self) -> Overview:
        states: dict[str, int] = {}
        for job in self._store.list_jobs():
            states[job.state] = states.get(job.state, 0) + 1
        return Overview(
            enclaves=self.enclaves(),
            simulation=self.simulation(),
            parties=len(self._store.list_parties()),
            datasets=len(self._store.list_datasets()),
            jobs_by_state=states,
            models=len(self._store.list_models()),
            audit_intact=self.audit(0).intact,
        )


def progress(job: JobRecord) -> list[ProgressPoint]:
    """Rounds done over time, from the enclave's "round N/M" events (in the clear).

    Starts at (0 s, round 0) once the job started; the events of an earlier
    attempt are kept, so a resumed job's curve continues where it stopped. The
    enclave reports rounds at its checkpoints, not the last one: a finished
    job's last point is the rounds its result statement records (early
    stopping may make them fewer than the terms'), at the "train" timing event.
    """
    if job.started_at is None:
        return []
    points = [ProgressPoint(seconds=0.0, round=0)]
    trained_at = None
    for event in job.events:
        match = ROUND_EVENT.match(event.text) if event.kind == "round" else None
        if match:
            seconds = max((event.at - job.started_at) / 1000, 0.0)
            points.append(ProgressPoint(seconds=seconds, round=int(match.group(1))))
        elif event.kind == "timing" and event.text.startswith("train "):
            trained_at = event.at
    rounds = _trained_rounds(job)
    if rounds is not None and rounds > points[-1].round:
        at = trained_at if trained_at is not None else job.updated_at
        points.append(ProgressPoint(seconds=max((at - job.started_at) / 1000, 0.0), round=rounds))
    return points


def _trained_rounds(job: JobRecord) -> int | None:
    """The rounds the enclave's result statement records (None: no statement yet).

    Read without checking the enclave's signature, as the coordinator's handler
    does: it only completes a chart; parties verify the statement themselves.
    """
    if not job.result_statement:
        return None
    try:
        envelope = Envelope.from_bytes(job.result_statement, "result statement")
        statement = ResultStatement.from_dict(canonical.loads(envelope.payload, "result"))
    except DetenteError:
        return None
    rounds = statement.summary.get("rounds")
    return rounds if isinstance(rounds, int) and not isinstance(rounds, bool) else None


def _rejection(job: JobRecord, names: dict[str, str]) -> JobRejection | None:
    """The job's rejection, if its signature verifies (an edited one is not shown as valid)."""
    if not job.rejection:
        return None
    try:
        envelope = Envelope.from_bytes(job.rejection, "job rejection")
        reason = Rejection.verify(envelope).reason
    except DetenteError:
        return JobRejection(party="", key="", reason="(a rejection whose signature fails)")
    key = envelope.signer.hex
    return JobRejection(party=names.get(key, key[:16]), key=key, reason=reason)
