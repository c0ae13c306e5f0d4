"""What a party does: register, attest, seal and upload, propose, approve, collect results.

Each function is one verb of the CLI; each verifies everything it receives
from the coordinator before acting on it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from party_client import tables
from party_client.home import PartyHome, SetupError, write_atomic
from party_client.remote import Coordinator
from protocols import hpke, stream
from protocols.attestation import Evidence, VerifiedEnclave, verify_evidence
from protocols.documents import (
    Approval,
    DatasetManifest,
    JobTerms,
    Recipient,
    Registration,
    ResultStatement,
    check_id,
    schema_sha256,
)
from protocols.errors import ConsentError, IntegrityError
from protocols.policy import AttestationPolicy
from protocols.statements import Envelope


def init(home: PartyHome, name: str, coordinator: str, pq: bool = False) -> Registration:
    check_id(name, "party name")
    home.create_identity(name, coordinator, pq)
    return register(home)


def register(home: PartyHome) -> Registration:
    config = home.config()
    signing = home.signing_key()
    registration = Registration(config["name"], signing.verify_key, home.hpke_key().public_key)
    with Coordinator.for_home(home) as remote:
        remote.register(registration.sign(signing).to_bytes())
    return registration


def attest(home: PartyHome, policy: AttestationPolicy) -> VerifiedEnclave:
    """Send a fresh nonce, verify the evidence, keep the record. Raises EvidenceRefused."""
    nonce = secrets.token_bytes(32)
    with Coordinator.for_home(home) as remote:
        reply = remote.evidence(nonce)
    evidence = Evidence(bytes(reply.identity), bytes(reply.quote), reply.backend)
    enclave = verify_evidence(evidence, nonce, policy)
    home.save_record(evidence, nonce, enclave)
    return enclave


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
    chunk_size: int = stream.DEFAULT_CHUNK_SIZE,
) -> Uploaded:
    """Validate, convert to Arrow IPC, seal to the attested enclave, sign, upload."""
    enclave, _ = home.attested_enclave(policy)
    table = tables.read_table(path, label, id_column)
    columns = tables.schema_columns(table)
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
        name=path.name,
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
    ).sign(signing)
    with Coordinator.for_home(home) as remote:
        remote.upload(manifest.to_bytes(), ciphertext)
    home.save_dataset(dataset_id, manifest.to_bytes())
    return Uploaded(dataset_id, table.num_rows, len(columns), len(ciphertext), enclave.simulation)


DEFAULT_PARAMS: dict[str, Any] = {
    "tree_method": "hist",
    "max_depth": 4,
    "eta": 0.1,
    "eval_metric": "auc",
    "nthread": 2,
}


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
) -> JobTerms:
    """Write and sign job terms naming the data sets, the enclave and the recipients."""
    enclave, _ = home.attested_enclave(policy)
    signing = home.signing_key()
    with Coordinator.for_home(home) as remote:
        known = {d.dataset_id: d for d in remote.datasets()}
        parties = remote.parties()
        entries = []
        owners: set[str] = set()
        for dataset_id in dataset_ids:
            if dataset_id not in known:
                raise SetupError(
                    f"no data set {dataset_id!r} at the coordinator: see `detente party datasets`"
                )
            envelope = Envelope.from_bytes(bytes(known[dataset_id].manifest), "dataset manifest")
            manifest = DatasetManifest.verify(envelope)
            owners.add(manifest.owner_key.hex)
            entries.append((dataset_id, envelope.digest))
        by_key = {}
        for party in parties:
            registration = Registration.verify(Envelope.from_bytes(bytes(party.registration)))
            by_key[registration.signing_key.hex] = registration
        chosen = []
        if recipients:
            by_name = {r.name: r for r in by_key.values()}
            for name in recipients:
                if name not in by_name:
                    raise SetupError(
                        f"no registered party named {name!r}: see `detente party parties`"
                    )
                chosen.append(by_name[name])
        else:
            chosen = [by_key[k] for k in sorted(owners) if k in by_key]
        terms = JobTerms(
            job_id=check_id(job_id or f"job-{secrets.token_hex(6)}", "job id"),
            datasets=entries,
            join="horizontal",
            objective="binary:logistic",
            label=label,
            params={**DEFAULT_PARAMS, **params},
            num_rounds=rounds,
            seed=seed,
            allowed_mrenclaves=[enclave.mrenclave],
            outputs=outputs,
            recipients=[Recipient(r.name, r.signing_key, r.hpke_key) for r in chosen],
            expires_at=int(time.time()) + expires_in,
            id_column=id_column,
            proposer=signing.verify_key.hex,
        )
        remote.propose(terms.sign(signing).to_bytes())
    return terms


def fetch_terms(home: PartyHome, job_id: str) -> tuple[Envelope, JobTerms, Any]:
    with Coordinator.for_home(home) as remote:
        job = remote.job(job_id)
    envelope = Envelope.from_bytes(bytes(job.terms), "job terms")
    return envelope, JobTerms.verify(envelope), job


def approve(home: PartyHome, policy: AttestationPolicy, job_id: str) -> JobTerms:
    """Sign an approval of the job's exact terms, after checking what they do with our data."""
    envelope, terms, _ = fetch_terms(home, job_id)
    if terms.job_id != job_id:
        raise IntegrityError(
            f"the coordinator returned terms of job {terms.job_id!r}, not {job_id!r}"
        )
    mine = home.dataset_manifests()
    for dataset_id, digest in terms.datasets:
        if dataset_id in mine and Envelope.from_bytes(mine[dataset_id]).digest != digest:
            raise ConsentError(
                f"the terms name data set {dataset_id!r} with a manifest that is not the one "
                "you signed: refuse this job"
            )
    for mrenclave in terms.allowed_mrenclaves:
        if mrenclave not in policy.mrenclave and policy.mrsigner is None:
            raise ConsentError(
                f"the terms allow enclave measurement {mrenclave[:16]}…, which your policy "
                "does not: refuse this job or update your policy"
            )
    approval = Approval(terms.job_id, envelope.digest).sign(home.signing_key())
    with Coordinator.for_home(home) as remote:
        remote.approve(job_id, approval.to_bytes())
    return terms


def wait(home: PartyHome, job_id: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    with Coordinator.for_home(home) as remote:
        while True:
            job = remote.job(job_id)
            if job.state in ("succeeded", "failed") or time.monotonic() > deadline:
                return job
            time.sleep(0.2)


def results(home: PartyHome, job_id: str, out_dir: Path, timeout: float = 0) -> dict[str, Path]:
    """Verify the enclave's result statement, decrypt our outputs, write them to ``out_dir``."""
    job = wait(home, job_id, timeout)
    if job.state != "succeeded":
        detail = f": {job.error}" if job.error else ""
        raise SetupError(f"job {job_id} is {job.state}{detail}")
    terms_envelope = Envelope.from_bytes(bytes(job.terms), "job terms")
    terms = JobTerms.verify(terms_envelope)
    enclave_key = home.enclave_signing_key()
    statement = ResultStatement.verify(
        Envelope.from_bytes(bytes(job.result_statement), "result statement"), enclave_key
    )
    if statement.job_id != job_id or statement.terms_digest != terms_envelope.digest:
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
            write_atomic(path, plaintext)
            written[output.name] = path
    if not written:
        raise ConsentError(f"job {job_id} released nothing to you: you are not a named recipient")
    return written


def describe_terms(terms: JobTerms) -> dict[str, Any]:
    return terms.to_dict()


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
