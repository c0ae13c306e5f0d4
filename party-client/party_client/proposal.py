"""Proposing a job: signed terms naming the data sets, the attested enclave and the recipients."""

from __future__ import annotations

import secrets
import time
from typing import Any

from party_client.datasets import fetch_manifest
from party_client.home import PartyHome
from party_client.identity import fetch_registrations
from party_client.remote import Coordinator
from protocols.documents import (
    RELEASE_TO_NAMED,
    RELEASE_TO_OWNERS,
    DatasetManifest,
    JobTerms,
    Recipient,
    Registration,
    check_id,
)
from protocols.errors import SetupError
from protocols.objectives import check_labels
from protocols.policy import AttestationPolicy

OBJECTIVE = "binary:logistic"

DEFAULT_PARAMS: dict[str, Any] = {
    "tree_method": "hist",
    "max_depth": 4,
    "eta": 0.1,
    "eval_metric": "auc",
    "nthread": 2,
}


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
            envelope, manifest = fetch_manifest(remote, dataset_id)
            if manifest.label is not None:
                check_labels(OBJECTIVE, manifest.label, params, f"data set {dataset_id!r}")
            entries.append((dataset_id, envelope.digest))
            manifests.append(manifest)
        registrations = fetch_registrations(remote)
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
