"""Consent: a job is accepted from its signed terms, manifests and approvals, before any data."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from enclave_worker.identity import EnclaveIdentity
from protocols.documents import DatasetManifest, JobTerms, check_approvals, check_release
from protocols.errors import ConsentError, DatasetError, IntegrityError
from protocols.objectives import check_objective
from protocols.statements import Envelope

log = logging.getLogger(__name__)

# Parameters the terms may not set: the enclave decides where threads and files go.
_FORBIDDEN_PARAMS = {"device", "tree_method_gpu", "model_out", "model_in", "save_period"}


@dataclass
class AcceptedJob:
    """A job whose consent checks passed; data sets may now be received."""

    terms_envelope: Envelope
    terms: JobTerms
    manifests: dict[str, DatasetManifest]
    counted: dict[str, int] = field(default_factory=dict)

    def check_chunk(self, dataset_id: str, size: int) -> None:
        """Count ``size`` bytes of ``dataset_id``; refuse a data set not in the job or too long.

        The worker's service counts here what it forwards to the job process,
        so intake errors surface before the data goes anywhere; the job
        process counts again what it receives (jobs.intake).
        """
        manifest = self.manifests.get(dataset_id)
        if manifest is None:
            raise ConsentError(f"data set {dataset_id!r} is not part of job {self.terms.job_id!r}")
        total = self.counted.get(dataset_id, 0) + size
        if total > manifest.ciphertext_size:
            raise IntegrityError(
                f"data set {dataset_id!r} is longer than its signed manifest says "
                f"({manifest.ciphertext_size} bytes)"
            )
        self.counted[dataset_id] = total


def accept(
    identity: EnclaveIdentity,
    terms_bytes: bytes,
    approvals: list[bytes],
    manifests: list[bytes],
    now: float | None = None,
    withdrawn: Collection[str] = (),
) -> AcceptedJob:
    """Check consent for a job, or raise ConsentError/SignatureError/FormatError.

    ``withdrawn`` holds the manifest digests of data sets whose owners withdrew
    them (enclave_worker.withdrawals): a job naming one is refused, whatever
    approvals it carries and whoever kept a copy of the ciphertext.
    """
    terms_envelope = Envelope.from_bytes(terms_bytes, "job terms")
    terms = JobTerms.verify(terms_envelope)
    now = time.time() if now is None else now
    if terms.expires_at <= now:
        raise ConsentError(f"job {terms.job_id!r} expired at {terms.expires_at}: propose it again")
    if identity.mrenclave not in terms.allowed_mrenclaves:
        raise ConsentError(
            f"job {terms.job_id!r} does not allow this enclave's measurement {identity.mrenclave}"
        )
    bad = _FORBIDDEN_PARAMS & set(terms.params)
    if bad:
        raise ConsentError(f"job terms set parameters the enclave controls: {sorted(bad)}")
    by_id: dict[str, tuple[Envelope, DatasetManifest]] = {}
    for raw in manifests:
        envelope = Envelope.from_bytes(raw, "dataset manifest")
        manifest = DatasetManifest.verify(envelope)
        by_id[manifest.dataset_id] = (envelope, manifest)
    accepted: dict[str, DatasetManifest] = {}
    for dataset_id, digest in terms.datasets:
        if dataset_id not in by_id:
            raise ConsentError(f"no signed manifest was given for data set {dataset_id!r}")
        envelope, manifest = by_id[dataset_id]
        if envelope.digest != digest:
            raise ConsentError(
                f"the manifest of data set {dataset_id!r} is not the one the job terms name"
            )
        if digest in withdrawn:
            raise ConsentError(
                f"data set {dataset_id!r} was withdrawn by its owner: this enclave runs no job "
                f"on it (its manifest {digest[:16]}… is on the enclave's withdrawn list); "
                "propose the job without it"
            )
        if manifest.sealed_to_mrenclave != identity.mrenclave:
            raise ConsentError(
                f"data set {dataset_id!r} was sealed to another enclave measurement "
                f"({manifest.sealed_to_mrenclave[:16]}…)"
            )
        if identity.hpke_private_key_for(manifest.sealed_to_hpke_key) is None:
            raise ConsentError(f"data set {dataset_id!r} was sealed to another enclave key")
        accepted[dataset_id] = manifest
    owners = {m.owner_key for m in accepted.values()}
    check_approvals(
        terms_envelope, owners, [Envelope.from_bytes(a, "job approval") for a in approvals]
    )
    check_release(terms, owners)
    try:
        check_objective(terms.objective)
    except DatasetError as exc:
        raise ConsentError(str(exc)) from None
    log.info("job %s accepted: %d data sets, all owners approved", terms.job_id, len(accepted))
    return AcceptedJob(terms_envelope, terms, accepted)
