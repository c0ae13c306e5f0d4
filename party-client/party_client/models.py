"""Sealed models: list them, look at one, and sign its retirement.

A sealed model's id is the id of the job that trained it (docs/protocol.md
§7). The coordinator records each model (its state, the job's owners, the
owners' signed retirements so far, how many queries it relayed); none of that
is trusted: retirements are verified here, the job's terms are verified under
their proposer's key, and a retirement is signed only over the digest of
those verified terms, by a party that owns one of their data sets (by the
signed manifests). With every owner's retirement the enclave destroys the
model file and its key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from party_client.datasets import fetch_manifest
from party_client.home import PartyHome
from party_client.identity import fetch_registrations
from party_client.job_control import JobView, job_view
from party_client.remote import Coordinator, CoordinatorError, RemoteModel, connected
from protocols.documents import ModelRetirement, Registration
from protocols.errors import (
    ConsentError,
    FormatError,
    IntegrityError,
    NotFound,
    SignatureError,
    WrongState,
)
from protocols.statements import Envelope

SEALED = "sealed"
RETIRED = "retired"


@dataclass(frozen=True)
class ModelOwner:
    """A data owner of the job that sealed the model, and whether it signed the retirement."""

    signing_key: str
    name: str  # as registered by that key; "" if unknown
    you: bool
    retired: bool  # its signed retirement of this model is recorded


@dataclass(frozen=True)
class ModelQuerier:
    """A party the terms let query the model: its budget, and what the coordinator relayed."""

    name: str
    signing_key: str
    total_rows: int
    rows_per_day: int | None
    you: bool
    queries: int  # answered queries the coordinator relayed (its count, not the enclave's)
    rows: int


@dataclass(frozen=True)
class ModelView:
    """A sealed model as this party sees it.

    ``terms`` fields (queriers, answer, objective) are known when the
    coordinator shows this party the job (its owners, proposer and
    recipients); otherwise ``queriers`` is empty and they are None.
    """

    model_id: str
    job_id: str
    state: str  # sealed, retired
    terms_digest: str
    owners: list[ModelOwner]
    queriers: list[ModelQuerier]
    objective: str | None
    answer: str | None
    digits: int | None
    created_at: int  # milliseconds since the epoch, by the coordinator's clock
    retired_at: int  # 0 while sealed

    @property
    def retired(self) -> bool:
        return self.state == RETIRED

    @property
    def awaiting(self) -> list[ModelOwner]:
        """Owners whose retirement is still missing."""
        return [o for o in self.owners if not o.retired]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "job_id": self.job_id,
            "state": self.state,
            "terms_digest": self.terms_digest,
            "owners": [o.__dict__ for o in self.owners],
            "queriers": [q.__dict__ for q in self.queriers],
            "objective": self.objective,
            "answer": self.answer,
            "digits": self.digits,
            "created_at": self.created_at,
            "retired_at": self.retired_at,
        }


def _signers(record: RemoteModel, terms_digest: str) -> set[str]:
    """The keys (hex) of the valid retirements the coordinator lists for ``record``."""
    signed: set[str] = set()
    for raw in record.retirements:
        try:
            envelope = Envelope.from_bytes(raw, "model retirement")
            retirement = ModelRetirement.verify(envelope)
        except (FormatError, SignatureError):
            continue
        if (retirement.model_id, retirement.terms_digest) == (record.model_id, terms_digest):
            signed.add(envelope.signer.hex)
    return signed


def _visible_job(remote: Coordinator, job_id: str) -> JobView | None:
    """The job, verified, if the coordinator shows it to this party; None if it does not."""
    try:
        return job_view(remote.job(job_id), job_id)
    except CoordinatorError as exc:
        if issubclass(exc.kind, NotFound):
            return None
        raise


def _view(
    record: RemoteModel,
    job: JobView | None,
    registrations: dict[str, Registration],
    me: str,
) -> ModelView:
    if record.model_id != record.job_id:
        raise IntegrityError(
            f"the coordinator lists model {record.model_id!r} as the model of job "
            f"{record.job_id!r}: a model's id is its job's id; refused"
        )
    terms = job.terms if job is not None else None
    if job is not None and (terms is None or not terms.sealed):
        raise IntegrityError(
            f"the coordinator lists a sealed model {record.model_id!r}, but the terms of job "
            f"{record.job_id!r} release the model: refused"
        )
    digest = job.terms_digest if job is not None else record.terms_digest
    if record.terms_digest != digest:
        raise IntegrityError(
            f"the coordinator records model {record.model_id!r} under terms digest "
            f"{record.terms_digest[:16]}…, but the job's terms have digest {digest[:16]}…: refused"
        )
    signed = _signers(record, digest)
    owners = [
        ModelOwner(
            key,
            registrations[key].name if key in registrations else "",
            key == me,
            key in signed,
        )
        for key in record.owners
    ]
    relayed = {q.querier: q for q in record.queries}
    queriers = [
        ModelQuerier(
            q.name,
            q.signing_key.hex,
            q.total,
            q.per_day,
            q.signing_key.hex == me,
            relayed[q.signing_key.hex].queries if q.signing_key.hex in relayed else 0,
            relayed[q.signing_key.hex].rows if q.signing_key.hex in relayed else 0,
        )
        for q in (terms.queriers if terms is not None else [])
    ]
    return ModelView(
        record.model_id,
        record.job_id,
        record.state,
        digest,
        owners,
        queriers,
        terms.objective if terms is not None else None,
        terms.answer if terms is not None else None,
        terms.answer_digits if terms is not None else None,
        record.created_at,
        record.retired_at,
    )


def models(home: PartyHome, *, remote: Coordinator | None = None) -> list[ModelView]:
    """The sealed models this party owns or may query, as the coordinator lists them."""
    me = home.signing_key().verify_key.hex
    with connected(home, remote) as coordinator:
        registrations = fetch_registrations(coordinator)
        return [
            _view(record, _visible_job(coordinator, record.job_id), registrations, me)
            for record in coordinator.models()
        ]


def model(home: PartyHome, model_id: str, *, remote: Coordinator | None = None) -> ModelView:
    """One sealed model (NotFound, through the coordinator, if this party may not see it)."""
    me = home.signing_key().verify_key.hex
    with connected(home, remote) as coordinator:
        record = coordinator.model(model_id)
        if record.model_id != model_id:
            raise IntegrityError(
                f"the coordinator returned model {record.model_id!r} for {model_id!r}"
            )
        return _view(
            record, _visible_job(coordinator, record.job_id), fetch_registrations(coordinator), me
        )


def retire(home: PartyHome, model_id: str, *, remote: Coordinator | None = None) -> ModelView:
    """Sign this owner's retirement of ``model_id`` and send it; the model as it is after.

    The retirement is signed over the digest of the job's terms, verified here
    (not over the digest the coordinator records), and only by an owner of one
    of the job's data sets by their signed manifests. Once every owner has
    signed, the coordinator passes the retirements to the enclave, which
    destroys the model and its key: :attr:`ModelView.retired` is then True.
    """
    signing = home.signing_key()
    me = signing.verify_key
    with connected(home, remote) as coordinator:
        record = coordinator.model(model_id)
        job = _visible_job(coordinator, model_id)
        if job is None or record.model_id != model_id:
            raise ConsentError(
                f"you own no data set of job {model_id!r}: only its data owners retire its model"
            )
        if not job.terms.sealed:
            raise WrongState(f"job {model_id!r} released its model: there is no model to retire")
        owners = {fetch_manifest(coordinator, d)[1].owner_key for d, _ in job.terms.datasets}
        if me not in owners:
            raise ConsentError(
                f"you own no data set of job {model_id!r}: only its data owners retire its model"
            )
        if record.state == RETIRED:
            raise WrongState(f"model {model_id!r} is already retired: nothing left to destroy")
        retirement = ModelRetirement(model_id, job.terms_digest).sign(signing)
        after = coordinator.retire_model(model_id, retirement.to_bytes())
        return _view(after, job, fetch_registrations(coordinator), me.hex)


def sealed_model_state(
    home: PartyHome, job_id: str, *, remote: Coordinator | None = None
) -> str | None:
    """The state of the model job ``job_id`` sealed (``sealed`` or ``retired``), or None if
    the coordinator records no such model (yet) or does not show it to this party."""
    with connected(home, remote) as coordinator:
        try:
            return coordinator.model(job_id).state
        except CoordinatorError as exc:
            if issubclass(exc.kind, NotFound):
                return None
            raise
