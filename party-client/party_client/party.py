"""What a party does: register, attest, seal and upload, propose, review and approve, collect.

Each function is one verb of the CLI; each verifies everything it receives
from the coordinator before acting on it. Consent is three steps, so that a
party signs exactly what it was shown: :func:`fetch_job` fetches the terms
once, :func:`review` checks them against what this party knows (its own data
sets, its policy, the keys it pinned for each name) and lists what to refuse
or to confirm, and :func:`sign_approval` signs that very envelope's digest.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from party_client import tables
from party_client.home import PartyHome, SetupError
from party_client.pins import KeyMismatch, PinStatus
from party_client.remote import Coordinator, RemoteEvent, RemoteJob
from protocols import hpke, stream
from protocols.attestation import Evidence, VerifiedEnclave, verify_evidence
from protocols.documents import (
    RELEASE_TO_NAMED,
    RELEASE_TO_OWNERS,
    Approval,
    DatasetManifest,
    JobTerms,
    Recipient,
    Registration,
    ResultStatement,
    check_id,
    check_release,
    party_fingerprint,
    schema_columns,
    schema_sha256,
)
from protocols.durable import write_atomic
from protocols.errors import ConsentError, DetenteError, IntegrityError
from protocols.keys import VerifyKey
from protocols.objectives import check_labels
from protocols.policy import AttestationPolicy
from protocols.statements import Envelope

OBJECTIVE = "binary:logistic"


def init(
    home: PartyHome, name: str, coordinator: str, pq: bool = False, enrollment_token: str = ""
) -> Registration:
    check_id(name, "party name")
    home.create_identity(name, coordinator, pq)
    return register(home, enrollment_token)


def register(home: PartyHome, enrollment_token: str = "") -> Registration:
    config = home.config()
    signing = home.signing_key()
    registration = Registration(config["name"], signing.verify_key, home.hpke_key().public_key)
    with Coordinator.for_home(home) as remote:
        remote.register(registration.sign(signing).to_bytes(), enrollment_token)
    # A party trusts its own keys under its own name.
    home.known_parties.remember(registration.name, registration.fingerprint)
    return registration


def attest(home: PartyHome, policy: AttestationPolicy) -> VerifiedEnclave:
    """Send a fresh nonce, verify the evidence, keep the record. Raises EvidenceRefused."""
    nonce = secrets.token_bytes(32)
    with Coordinator.for_home(home) as remote:
        reply = remote.evidence(nonce)
    evidence = Evidence(reply.identity, reply.quote, reply.backend)
    enclave = verify_evidence(evidence, nonce, policy)
    home.save_record(evidence, nonce, enclave)
    return enclave


# --------------------------------------------------------------------------- parties


@dataclass(frozen=True)
class KnownParty:
    """A registered party as this party sees it: verified registration and pin status."""

    name: str
    signing_key: str
    fingerprint: str
    pin: str  # "pinned" (matches the pin), "new" (pinned now, first use), "MISMATCH"
    you: bool


def parties(home: PartyHome) -> list[KnownParty]:
    """Every registration the coordinator lists, verified and compared with the pins.

    Names seen for the first time are pinned (trust on first use); a name
    whose registration differs from its pin is reported as ``MISMATCH``
    (and never used by :func:`propose` or accepted by :func:`review`).
    """
    me = home.signing_key().verify_key
    with Coordinator.for_home(home) as remote:
        listed = remote.parties()
    known = home.known_parties
    seen = []
    for party in listed:
        registration = Registration.verify(Envelope.from_bytes(party.registration))
        try:
            status: str = known.remember(registration.name, registration.fingerprint)
        except KeyMismatch:
            status = "MISMATCH"
        seen.append(
            KnownParty(
                registration.name,
                registration.signing_key.hex,
                registration.fingerprint,
                status,
                registration.signing_key == me,
            )
        )
    return seen


def pin(home: PartyHome, name: str, fingerprint: str) -> str:
    """Pin a fingerprint learned out of band for ``name``; returns it normalised."""
    check_id(name, "party name")
    return home.known_parties.pin(name, fingerprint).fingerprint


def _registrations(remote: Coordinator) -> dict[str, Registration]:
    """The coordinator's registrations, verified, by signing key (hex)."""
    by_key = {}
    for party in remote.parties():
        registration = Registration.verify(Envelope.from_bytes(party.registration))
        by_key[registration.signing_key.hex] = registration
    return by_key


# --------------------------------------------------------------------------- data sets


@dataclass
class Uploaded:
    dataset_id: str
    rows: int
    columns: int
    ciphertext_size: int
    simulation: bool


def upload(
    home: PartyHome,
    policy: AttestationPolicy,
    path: Path,
    label: str,
    id_column: str | None,
    dataset_id: str | None = None,
    publish_schema: bool = False,
    chunk_size: int = stream.CHUNK_SIZE,
    display_name: str = "",
) -> Uploaded:
    """Validate, convert to Arrow IPC, seal to the attested enclave, sign, upload.

    The manifest names the data set by ``display_name`` only if the owner
    gives one: the local file name stays local.
    """
    enclave, _ = home.attested_enclave(policy)
    prepared = tables.read_table(path, label, id_column)
    table = prepared.table
    columns = schema_columns(table.schema)
    dataset_id = check_id(
        dataset_id or f"{home.config()['name']}-{secrets.token_hex(6)}", "dataset id"
    )
    data_key = secrets.token_bytes(32)
    # A post-quantum party wraps to the enclave's post-quantum key (protocols/SPEC.md §4.3).
    enclave_key = enclave.identity.data_key_recipient(home.hpke_key().kem)
    ciphertext = stream.seal_stream(data_key, tables.to_ipc(table), dataset_id.encode(), chunk_size)
    signing = home.signing_key()
    manifest = DatasetManifest(
        dataset_id=dataset_id,
        name=display_name,
        owner_key=signing.verify_key,
        schema_sha256=schema_sha256(columns),
        row_count=table.num_rows,
        ciphertext_sha256=hashlib.sha256(ciphertext).hexdigest(),
        ciphertext_size=len(ciphertext),
        wrapped_key=hpke.wrap_key(
            data_key, enclave_key, hpke.data_key_info(dataset_id, enclave_key)
        ),
        sealed_to_mrenclave=enclave.mrenclave,
        sealed_to_hpke_key=enclave_key,
        public_schema=columns if publish_schema else None,
        created_at=int(time.time()),
        label=prepared.label,
    ).sign(signing)
    with Coordinator.for_home(home) as remote:
        remote.upload(manifest.to_bytes(), ciphertext)
    home.save_dataset(dataset_id, manifest.to_bytes())
    return Uploaded(dataset_id, table.num_rows, len(columns), len(ciphertext), enclave.simulation)


# --------------------------------------------------------------------------- proposing

DEFAULT_PARAMS: dict[str, Any] = {
    "tree_method": "hist",
    "max_depth": 4,
    "eta": 0.1,
    "eval_metric": "auc",
    "nthread": 2,
}


def _manifest(remote: Coordinator, dataset_id: str) -> tuple[Envelope, DatasetManifest]:
    """A data set's manifest from the coordinator, verified (signed by its owner)."""
    record = remote.dataset(dataset_id)
    envelope = Envelope.from_bytes(record.manifest, "dataset manifest")
    manifest = DatasetManifest.verify(envelope)
    if manifest.dataset_id != dataset_id:
        raise IntegrityError(
            f"the coordinator returned the manifest of {manifest.dataset_id!r} for {dataset_id!r}"
        )
    return envelope, manifest


def _owner_recipients(
    home: PartyHome, manifests: list[DatasetManifest], registrations: dict[str, Registration]
) -> list[Recipient]:
    """One recipient per data owner, each from the registration signed by the owner's own key.

    Fails if an owner's registration is missing: a job must never train on a
    party's data and leave that party without its results.
    """
    chosen: list[Recipient] = []
    for manifest in manifests:
        key = manifest.owner_key.hex
        if any(r.signing_key == manifest.owner_key for r in chosen):
            continue
        registration = registrations.get(key)
        if registration is None:
            raise SetupError(
                f"the owner ({key[:16]}…) of data set {manifest.dataset_id!r} has no "
                "registration at the coordinator, so the job could not release its results to "
                "that owner; nothing was proposed. Ask the coordinator's operator why the "
                "registration is missing, or name recipients with --recipient"
            )
        home.known_parties.remember(registration.name, registration.fingerprint)
        chosen.append(Recipient(registration.name, registration.signing_key, registration.hpke_key))
    return chosen


def _named_recipients(
    home: PartyHome, names: list[str], registrations: dict[str, Registration]
) -> list[Recipient]:
    by_name: dict[str, list[Registration]] = {}
    for registration in registrations.values():
        by_name.setdefault(registration.name, []).append(registration)
    chosen = []
    for name in names:
        found = by_name.get(name, [])
        if len(found) != 1:
            raise SetupError(
                f"no registered party named {name!r}: see `detente party parties`"
                if not found
                else f"the coordinator lists {len(found)} registrations named {name!r}: refused"
            )
        registration = found[0]
        home.known_parties.remember(name, registration.fingerprint)
        chosen.append(Recipient(name, registration.signing_key, registration.hpke_key))
    return chosen


def propose(
    home: PartyHome,
    policy: AttestationPolicy,
    dataset_ids: list[str],
    label: str,
    id_column: str | None,
    rounds: int,
    params: dict[str, Any],
    seed: int,
    recipients: list[str] | None,
    outputs: list[str],
    job_id: str | None = None,
    expires_in: int = 24 * 3600,
    max_seconds: int | None = None,
) -> JobTerms:
    """Write and sign job terms naming the data sets, the enclave and the recipients.

    Without ``recipients`` the terms release to the data owners
    (``release.to = "owners"``): one recipient per owner, and proposing fails
    if any owner's registration is missing.
    """
    enclave, _ = home.attested_enclave(policy)
    signing = home.signing_key()
    params = {**DEFAULT_PARAMS, **params}
    params.pop("objective", None)  # the terms' objective field decides
    with Coordinator.for_home(home) as remote:
        entries = []
        manifests = []
        for dataset_id in dataset_ids:
            envelope, manifest = _manifest(remote, dataset_id)
            if manifest.label is not None:
                check_labels(OBJECTIVE, manifest.label, params, f"data set {dataset_id!r}")
            entries.append((dataset_id, envelope.digest))
            manifests.append(manifest)
        registrations = _registrations(remote)
        if recipients:
            chosen = _named_recipients(home, recipients, registrations)
            release_to = RELEASE_TO_NAMED
        else:
            chosen = _owner_recipients(home, manifests, registrations)
            release_to = RELEASE_TO_OWNERS
        terms = JobTerms(
            job_id=check_id(job_id or f"job-{secrets.token_hex(6)}", "job id"),
            datasets=entries,
            join="horizontal",
            objective=OBJECTIVE,
            label=label,
            params=params,
            num_rounds=rounds,
            seed=seed,
            allowed_mrenclaves=[enclave.mrenclave],
            outputs=outputs,
            recipients=chosen,
            expires_at=int(time.time()) + expires_in,
            id_column=id_column,
            proposer=signing.verify_key.hex,
            release_to=release_to,
            max_seconds=max_seconds,
        )
        remote.propose(terms.sign(signing).to_bytes())
    return terms


# --------------------------------------------------------------------------- jobs


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


def _job_view(job: RemoteJob, job_id: str) -> JobView:
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


def fetch_job(home: PartyHome, job_id: str) -> JobView:
    """Fetch a job once and verify its terms (signed by their proposer)."""
    with Coordinator.for_home(home) as remote:
        return _job_view(remote.job(job_id), job_id)


def jobs(home: PartyHome) -> list[JobView]:
    """The jobs this party takes part in (as proposer, data owner or recipient)."""
    with Coordinator.for_home(home) as remote:
        listed = remote.jobs()
    return [_job_view(j, j.job_id) for j in listed]


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


@dataclass
class Review:
    """What approving a job means for this party, and what stands in the way.

    ``refusals`` are reasons the client will not sign at all; ``warnings``
    need the party's explicit confirmation. Both name what differs.
    """

    job: JobView
    datasets: list[DatasetView] = field(default_factory=list)
    recipients: list[RecipientView] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

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
            "num_rounds": terms.num_rounds,
            "seed": terms.seed,
            "params": terms.params,
            "allowed_mrenclaves": terms.allowed_mrenclaves,
            "expires_at": terms.expires_at,
            "max_seconds": terms.max_seconds,
            "outputs": terms.outputs,
            "release_to": terms.release_to,
            "datasets": [d.__dict__ for d in self.datasets],
            "recipients": [r.__dict__ for r in self.recipients],
            "refusals": self.refusals,
            "warnings": self.warnings,
        }


def _pin_status(home: PartyHome, name: str, fingerprint: str) -> tuple[str, str | None]:
    try:
        status: PinStatus = home.known_parties.check(name, fingerprint, "recipient")
    except KeyMismatch as exc:
        return "MISMATCH", str(exc)
    return status, None


def review(home: PartyHome, policy: AttestationPolicy, job: JobView) -> Review:
    """Check a fetched job's terms for this party: what it would sign, and to whom it releases.

    Nothing is signed here. Refusals: one of this party's data sets named with
    another manifest, a measurement its policy does not allow, expired terms,
    a recipient under this party's name (or key) with other keys, a recipient
    whose keys differ from the ones pinned for its name, terms releasing to
    the owners whose recipients are not exactly the owners. Warning: this
    party receives nothing (it must confirm that explicitly).
    """
    terms = job.terms
    found = Review(job)
    me = home.signing_key().verify_key
    my_name = home.config()["name"]
    my_fingerprint = party_fingerprint(me, home.hpke_key().public_key)
    mine = home.dataset_manifests()
    if job.state != "proposed":
        hint = (
            f"; its proposer can run it again with `detente party retry {job.job_id}`"
            if job.state == "failed"
            else ""
        )
        found.refusals.append(f"job {job.job_id!r} is {job.state}: it takes no approvals{hint}")
    if terms.expires_at <= time.time():
        found.refusals.append(f"the terms expired at {terms.expires_at}")
    for mrenclave in terms.allowed_mrenclaves:
        if mrenclave not in policy.mrenclave and policy.mrsigner is None:
            found.refusals.append(
                f"the terms allow enclave measurement {mrenclave[:16]}…, which your policy does "
                "not: refuse this job or update your policy"
            )
    owners: set[VerifyKey] = set()
    with Coordinator.for_home(home) as remote:
        registrations = _registrations(remote)
        for dataset_id, digest in terms.datasets:
            if dataset_id in mine and Envelope.from_bytes(mine[dataset_id]).digest != digest:
                found.refusals.append(
                    f"the terms name your data set {dataset_id!r} with a manifest that is not "
                    "the one you signed"
                )
                continue
            try:
                envelope, manifest = _manifest(remote, dataset_id)
            except DetenteError as exc:
                found.refusals.append(f"cannot check data set {dataset_id!r}: {exc}")
                continue
            if envelope.digest != digest:
                found.refusals.append(
                    f"the terms name data set {dataset_id!r} with manifest digest {digest[:16]}…, "
                    f"but its signed manifest has digest {envelope.digest[:16]}…"
                )
                continue
            owners.add(manifest.owner_key)
            owner = registrations.get(manifest.owner_key.hex)
            found.datasets.append(
                DatasetView(
                    dataset_id,
                    manifest.owner_key.hex,
                    owner.name if owner else "",
                    manifest.row_count,
                    manifest.owner_key == me,
                )
            )
    for r in terms.recipients:
        fingerprint = r.fingerprint
        you = r.signing_key == me
        if (r.name == my_name or you) and fingerprint != my_fingerprint:
            found.refusals.append(
                f"the recipient {r.name!r} ({r.signing_key.hex[:16]}…) claims your name or key "
                "but is not your identity: the results would go to someone else"
            )
            status, problem = "MISMATCH", None
        else:
            status, problem = _pin_status(home, r.name, fingerprint)
        if problem:
            found.refusals.append(problem)
        found.recipients.append(
            RecipientView(
                r.name, r.signing_key.hex, fingerprint, you, r.signing_key in owners, status
            )
        )
    try:
        check_release(terms, owners)
    except ConsentError as exc:
        found.refusals.append(str(exc))
    if terms.outputs and me not in {r.signing_key for r in terms.recipients}:
        found.warnings.append(
            "you receive nothing from this job: it releases "
            f"{', '.join(terms.outputs)} only to {', '.join(r.name for r in terms.recipients)}"
        )
    # Another owner left out of named recipients is shown (datasets and recipients
    # list who receives what) but is that owner's own decision when it approves.
    return found


def sign_approval(home: PartyHome, reviewed: Review, accept_warnings: bool = False) -> JobView:
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
    for recipient in reviewed.recipients:
        if recipient.pin == "new":
            home.known_parties.remember(recipient.name, recipient.fingerprint)
    job = reviewed.job
    approval = Approval(job.job_id, job.terms_digest).sign(home.signing_key())
    with Coordinator.for_home(home) as remote:
        return _job_view(remote.approve(job.job_id, approval.to_bytes()), job.job_id)


def approve(
    home: PartyHome, policy: AttestationPolicy, job_id: str, accept_warnings: bool = False
) -> Review:
    """Fetch once, review and sign (the library form of `detente party approve --yes`)."""
    reviewed = review(home, policy, fetch_job(home, job_id))
    sign_approval(home, reviewed, accept_warnings)
    return reviewed


def cancel(home: PartyHome, job_id: str, reason: str = "") -> JobView:
    with Coordinator.for_home(home) as remote:
        return _job_view(remote.cancel(job_id, reason), job_id)


def retry(home: PartyHome, job_id: str) -> JobView:
    with Coordinator.for_home(home) as remote:
        return _job_view(remote.retry(job_id), job_id)


FINISHED = ("succeeded", "failed", "cancelled")


def wait(home: PartyHome, job_id: str, timeout: float) -> JobView:
    deadline = time.monotonic() + timeout
    with Coordinator.for_home(home) as remote:
        while True:
            job = _job_view(remote.job(job_id), job_id)
            if job.state in FINISHED or time.monotonic() > deadline:
                return job
            time.sleep(0.2)


def results(home: PartyHome, job_id: str, out_dir: Path, timeout: float = 0) -> dict[str, Path]:
    """Verify the enclave's result statement, decrypt our outputs, write them to ``out_dir``.

    Outputs are written with mode 0600, like keys: they are this party's results.
    """
    job = wait(home, job_id, timeout)
    if job.state != "succeeded":
        detail = f": {job.error}" if job.error else ""
        raise SetupError(f"job {job_id} is {job.state}{detail}")
    terms = job.terms
    enclave_key = home.enclave_signing_key()
    statement = ResultStatement.verify(
        Envelope.from_bytes(job.result_statement, "result statement"), enclave_key
    )
    if statement.job_id != job_id or statement.terms_digest != job.terms_digest:
        raise IntegrityError("the result statement is about other job terms: refuse it")
    if statement.mrenclave not in terms.allowed_mrenclaves:
        raise IntegrityError("the result comes from a measurement the terms do not allow")
    me = home.signing_key().verify_key
    hpke_key = home.hpke_key()
    written: dict[str, Path] = {}
    with Coordinator.for_home(home) as remote:
        for output in statement.outputs:
            wrapped = output.wrapped_keys.get(me.hex)
            if wrapped is None:
                continue
            ciphertext = remote.fetch_output(job_id, output.name)
            if hashlib.sha256(ciphertext).hexdigest() != output.ciphertext_sha256:
                raise IntegrityError(f"output {output.name!r} does not match the signed statement")
            key = hpke.unwrap_key(
                wrapped, hpke_key, hpke.result_key_info(job_id, output.name, hpke_key.public_key)
            )
            plaintext = stream.open_stream(key, ciphertext, f"{job_id}/{output.name}".encode())
            path = out_dir / f"{output.name}.json"
            write_atomic(path, plaintext, mode=0o600)
            written[output.name] = path
    if not written:
        raise ConsentError(f"job {job_id} released nothing to you: you are not a named recipient")
    return written


def enclave_summary(enclave: VerifiedEnclave) -> dict[str, Any]:
    return {
        "mrenclave": enclave.mrenclave,
        "mrsigner": enclave.mrsigner,
        "simulation": enclave.simulation,
        "enclave_signing_key": enclave.identity.signing_key.hex,
        "enclave_hpke_key": enclave.identity.hpke_key.hex,
        "verdict": [
            {"rule": r.name, "passed": r.passed, "detail": r.detail} for r in enclave.verdict
        ],
    }


__all__ = [
    "DEFAULT_PARAMS",
    "DatasetView",
    "JobView",
    "KnownParty",
    "RecipientView",
    "Review",
    "Uploaded",
    "approve",
    "attest",
    "cancel",
    "enclave_summary",
    "fetch_job",
    "init",
    "jobs",
    "parties",
    "pin",
    "propose",
    "register",
    "results",
    "retry",
    "review",
    "sign_approval",
    "upload",
    "wait",
]
