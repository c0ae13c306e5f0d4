"""Consent: review a fetched job's terms against what this party knows, then sign exactly them.

Consent is three steps, so that a party signs exactly what it was shown:
:func:`~party_client.fetch_job` fetches the terms once, :func:`review` checks
them against what this party knows (its own data sets, its policy, the keys
it pinned for each name) and lists what to refuse or to confirm, and
:func:`sign_approval` signs that very envelope's digest. Each check of the
review is one small function below, in the order its findings are listed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from party_client.datasets import fetch_manifest
from party_client.home import PartyHome
from party_client.identity import fetch_registrations
from party_client.job_control import JobView, fetch_job, job_view
from party_client.pins import KeyMismatch, PinStatus
from party_client.remote import Coordinator, connected
from protocols.documents import (
    Approval,
    JobTerms,
    Recipient,
    Registration,
    check_release,
    party_fingerprint,
)
from protocols.errors import ConsentError, DetenteError
from protocols.keys import VerifyKey
from protocols.policy import AttestationPolicy
from protocols.statements import Envelope


@dataclass(frozen=True)
class DatasetView:
    dataset_id: str
    owner_key: str
    owner_name: str  # as registered by the owner's key; "" if unknown
    rows: int
    yours: bool


@dataclass(frozen=True)
class RecipientView:
    name: str
    signing_key: str
    fingerprint: str
    you: bool
    owner: bool  # owns a data set of the job
    pin: str  # "pinned", "new" (first use), "MISMATCH"


@dataclass(frozen=True)
class QuerierView:
    """A party the terms let query the sealed model, with its budget and pin status."""

    name: str
    signing_key: str
    fingerprint: str
    you: bool
    owner: bool  # owns a data set of the job
    pin: str  # "pinned", "new" (first use), "MISMATCH"
    total_rows: int
    rows_per_day: int | None


@dataclass
class Review:
    """What approving a job means for this party, and what stands in the way.

    ``refusals`` are reasons the client will not sign at all; ``warnings``
    need the party's explicit confirmation. Both name what differs.
    """

    job: JobView
    datasets: list[DatasetView] = field(default_factory=list)
    recipients: list[RecipientView] = field(default_factory=list)
    queriers: list[QuerierView] = field(default_factory=list)  # of a sealed model
    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def releases(self) -> dict[str, list[str]]:
        """Who receives which output, by the names of the recipients: each output of the
        terms to every recipient, but ``predictions``, which is one output per data set
        (``predictions.DATASET``) for its owner alone, if the owner is a recipient."""
        terms = self.job.terms
        shown: dict[str, list[str]] = {}
        for output in terms.outputs:
            if output != "predictions":
                shown[output] = [r.name for r in self.recipients]
                continue
            for d in self.datasets:
                shown[f"predictions.{d.dataset_id}"] = [
                    r.name for r in self.recipients if r.signing_key == d.owner_key
                ]
        return shown

    def model(self) -> dict[str, Any]:
        """What becomes of the model: released (an output, to the recipients) or sealed in
        the enclave, with who may query it, how many rows, and what an answer holds."""
        terms = self.job.terms
        if not terms.sealed:
            return {"disposition": terms.model}
        return {
            "disposition": terms.model,
            "model_id": terms.job_id,
            "queriers": [q.__dict__ for q in self.queriers],
            "answer": terms.answer,
            "digits": terms.answer_digits,
        }

    def to_dict(self) -> dict[str, Any]:
        terms = self.job.terms
        return {
            "job_id": terms.job_id,
            "state": self.job.state,
            "terms_digest": self.job.terms_digest,
            "proposer": terms.proposer,
            "join": terms.join,
            "objective": terms.objective,
            "label": terms.label,
            "id_column": terms.id_column,
            "id_columns": {d: terms.id_column_of(d) for d, _ in terms.datasets},
            "num_rounds": terms.num_rounds,
            "seed": terms.seed,
            "params": terms.params,
            "allowed_mrenclaves": terms.allowed_mrenclaves,
            "expires_at": terms.expires_at,
            "max_seconds": terms.max_seconds,
            "min_rows": terms.min_rows,
            "validation_fraction": terms.validation_fraction,
            "early_stopping_rounds": terms.early_stopping_rounds,
            "metrics_every": terms.metrics_every,
            "live_metrics": terms.live_metrics,
            "model_format": terms.model_format,
            "outputs": terms.outputs,
            "release_to": terms.release_to,
            "releases": self.releases(),
            "model": self.model(),
            "datasets": [d.__dict__ for d in self.datasets],
            "recipients": [r.__dict__ for r in self.recipients],
            "refusals": self.refusals,
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class _Me:
    """What this party knows of itself, to compare the terms with."""

    key: VerifyKey
    name: str
    fingerprint: str
    manifests: dict[str, bytes]  # this party's own signed manifests, by data set id

    @classmethod
    def of(cls, home: PartyHome) -> _Me:
        key = home.signing_key().verify_key
        return cls(
            key,
            home.config()["name"],
            party_fingerprint(key, home.hpke_key().public_key),
            home.dataset_manifests(),
        )


def review(
    home: PartyHome, policy: AttestationPolicy, job: JobView, *, remote: Coordinator | None = None
) -> Review:
    """Check a fetched job's terms for this party: what it would sign, and to whom it releases.

    Nothing is signed here. Refusals: one of this party's data sets named with
    another manifest, a measurement its policy does not allow, expired terms,
    a recipient or querier under this party's name (or key) with other keys,
    a recipient or querier whose keys differ from the ones pinned for its
    name, terms releasing to the owners whose recipients are not exactly the
    owners. Warnings (the party must confirm them explicitly): this party
    receives nothing; the model is sealed and this party may not query it.
    """
    terms = job.terms
    found = Review(job)
    me = _Me.of(home)
    found.refusals += _state_refusals(job)
    found.refusals += _expiry_refusals(terms)
    found.refusals += _enclave_refusals(terms, policy)
    owners = _check_datasets(home, me, found, remote)
    _check_recipients(home, me, owners, found)
    _check_queriers(home, me, owners, found)
    found.refusals += _release_refusals(terms, owners)
    found.warnings += _receives_nothing(terms, me.key)
    found.warnings += _queries_nothing(terms, me.key)
    # Another owner left out of named recipients is shown (datasets and recipients
    # list who receives what) but is that owner's own decision when it approves.
    return found


def _state_refusals(job: JobView) -> list[str]:
    """Only a proposed job takes approvals."""
    if job.state == "proposed":
        return []
    hint = (
        f"; its proposer can run it again with `detente party retry {job.job_id}`"
        if job.state == "failed"
        else ""
    )
    return [f"job {job.job_id!r} is {job.state}: it takes no approvals{hint}"]


def _expiry_refusals(terms: JobTerms) -> list[str]:
    if terms.expires_at <= time.time():
        return [f"the terms expired at {terms.expires_at}"]
    return []


def _enclave_refusals(terms: JobTerms, policy: AttestationPolicy) -> list[str]:
    """Every measurement the terms allow must be one this party's policy allows."""
    return [
        f"the terms allow enclave measurement {mrenclave[:16]}…, which your policy does "
        "not: refuse this job or update your policy"
        for mrenclave in terms.allowed_mrenclaves
        if mrenclave not in policy.mrenclave and policy.mrsigner is None
    ]


def _check_datasets(
    home: PartyHome, me: _Me, found: Review, remote: Coordinator | None
) -> set[VerifyKey]:
    """List each data set of the terms (or refuse it); return the owners' keys."""
    owners: set[VerifyKey] = set()
    with connected(home, remote) as coordinator:
        registrations = fetch_registrations(coordinator)
        for dataset_id, digest in found.job.terms.datasets:
            checked = _check_dataset(coordinator, registrations, me, dataset_id, digest)
            if isinstance(checked, str):
                found.refusals.append(checked)
                continue
            view, owner = checked
            owners.add(owner)
            found.datasets.append(view)
    return owners


def _check_dataset(
    remote: Coordinator,
    registrations: dict[str, Registration],
    me: _Me,
    dataset_id: str,
    digest: str,
) -> tuple[DatasetView, VerifyKey] | str:
    """One data set of the terms, with its owner; or why it is refused."""
    mine = me.manifests.get(dataset_id)
    if mine is not None and Envelope.from_bytes(mine).digest != digest:
        return (
            f"the terms name your data set {dataset_id!r} with a manifest that is not "
            "the one you signed"
        )
    try:
        envelope, manifest = fetch_manifest(remote, dataset_id)
    except DetenteError as exc:
        return f"cannot check data set {dataset_id!r}: {exc}"
    if envelope.digest != digest:
        return (
            f"the terms name data set {dataset_id!r} with manifest digest {digest[:16]}…, "
            f"but its signed manifest has digest {envelope.digest[:16]}…"
        )
    owner = registrations.get(manifest.owner_key.hex)
    view = DatasetView(
        dataset_id,
        manifest.owner_key.hex,
        owner.name if owner else "",
        manifest.row_count,
        manifest.owner_key == me.key,
    )
    return view, manifest.owner_key


def _check_recipients(home: PartyHome, me: _Me, owners: set[VerifyKey], found: Review) -> None:
    """List each recipient with its pin status; refuse impostors and pin mismatches."""
    for r in found.job.terms.recipients:
        status, problem = _recipient_pin(home, me, r)
        if problem:
            found.refusals.append(problem)
        found.recipients.append(
            RecipientView(
                r.name,
                r.signing_key.hex,
                r.fingerprint,
                r.signing_key == me.key,
                r.signing_key in owners,
                status,
            )
        )


def _check_queriers(home: PartyHome, me: _Me, owners: set[VerifyKey], found: Review) -> None:
    """List each querier of a sealed model with its budget; refuse impostors and mismatches."""
    recipients = {r.name: r.fingerprint for r in found.job.terms.recipients}
    for q in found.job.terms.queriers:
        fingerprint = party_fingerprint(q.signing_key, q.hpke_key)
        status, problem = _party_pin(
            home, me, q.name, q.signing_key, fingerprint, "querier", "its answers"
        )
        if problem is None and recipients.get(q.name, fingerprint) != fingerprint:
            status = "MISMATCH"
            problem = (
                f"the terms name {q.name!r} as a recipient and as a querier with different "
                "keys: one of them is not that party"
            )
        if problem:
            found.refusals.append(problem)
        found.queriers.append(
            QuerierView(
                q.name,
                q.signing_key.hex,
                fingerprint,
                q.signing_key == me.key,
                q.signing_key in owners,
                status,
                q.total,
                q.per_day,
            )
        )


def _recipient_pin(home: PartyHome, me: _Me, r: Recipient) -> tuple[str, str | None]:
    """A recipient's pin status, and why it is refused if it is."""
    return _party_pin(home, me, r.name, r.signing_key, r.fingerprint, "recipient", "the results")


def _party_pin(
    home: PartyHome,
    me: _Me,
    name: str,
    key: VerifyKey,
    fingerprint: str,
    role: str,
    what: str,
) -> tuple[str, str | None]:
    """A recipient's or querier's pin status, and why it is refused if it is."""
    if (name == me.name or key == me.key) and fingerprint != me.fingerprint:
        return "MISMATCH", (
            f"the {role} {name!r} ({key.hex[:16]}…) claims your name or key but is not your "
            f"identity: {what} would go to someone else"
        )
    try:
        status: PinStatus = home.known_parties.check(name, fingerprint, role)
    except KeyMismatch as exc:
        return "MISMATCH", str(exc)
    return status, None


def _release_refusals(terms: JobTerms, owners: set[VerifyKey]) -> list[str]:
    """Terms that release to the owners must name exactly them (protocols.documents)."""
    try:
        check_release(terms, owners)
    except ConsentError as exc:
        return [str(exc)]
    return []


def _receives_nothing(terms: JobTerms, me: VerifyKey) -> list[str]:
    """A party that receives nothing must confirm that explicitly."""
    if terms.outputs and me not in {r.signing_key for r in terms.recipients}:
        return [
            "you receive nothing from this job: it releases "
            f"{', '.join(terms.outputs)} only to {', '.join(r.name for r in terms.recipients)}"
        ]
    return []


def _queries_nothing(terms: JobTerms, me: VerifyKey) -> list[str]:
    """An owner of a sealed model that may not query it must confirm that explicitly."""
    if terms.sealed and terms.querier(me) is None:
        return [
            f"the model stays sealed in the enclave and you may not query it: only "
            f"{', '.join(q.name for q in terms.queriers)} may"
        ]
    return []


def sign_approval(
    home: PartyHome,
    reviewed: Review,
    accept_warnings: bool = False,
    *,
    remote: Coordinator | None = None,
) -> JobView:
    """Sign an approval of the exact terms envelope that was reviewed, and send it.

    Refuses (ConsentError) if the review found refusals, or warnings that
    ``accept_warnings`` does not accept. Recipients seen for the first time
    are pinned now: this party accepted their keys.
    """
    if reviewed.refusals:
        raise ConsentError(
            f"refusing to approve job {reviewed.job.job_id!r}: " + "; ".join(reviewed.refusals)
        )
    if reviewed.warnings and not accept_warnings:
        raise ConsentError(
            f"job {reviewed.job.job_id!r} needs your explicit confirmation: "
            + "; ".join(reviewed.warnings)
        )
    seen: list[RecipientView | QuerierView] = [*reviewed.recipients, *reviewed.queriers]
    for party in seen:
        if party.pin == "new":
            home.known_parties.remember(party.name, party.fingerprint)
    job = reviewed.job
    approval = Approval(job.job_id, job.terms_digest).sign(home.signing_key())
    with connected(home, remote) as coordinator:
        return job_view(coordinator.approve(job.job_id, approval.to_bytes()), job.job_id)


def approve(
    home: PartyHome,
    policy: AttestationPolicy,
    job_id: str,
    accept_warnings: bool = False,
    *,
    remote: Coordinator | None = None,
) -> Review:
    """Fetch once, review and sign (the library form of `detente party approve --yes`)."""
    reviewed = review(home, policy, fetch_job(home, job_id, remote=remote), remote=remote)
    sign_approval(home, reviewed, accept_warnings, remote=remote)
    return reviewed
