"""Proposing a job: signed terms naming the data sets, the attested enclave, the recipients
and, for a model sealed in the enclave, who may query it and how much.

Before anything is sent, the terms are checked against the data sets' signed
manifests (:func:`check_terms`): the objective against each label summary,
where the label is (one data set of a vertical job holds it), the minimum
number of rows against their row counts, and every rule by which
:meth:`JobTerms.verify <protocols.documents.JobTerms.verify>` refuses terms.
What the enclave would refuse after every owner approved is refused here;
a sealed model's options are checked first (:func:`check_sealing`), each
refusal naming the option to change.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from party_client.datasets import fetch_manifest
from party_client.home import PartyHome
from party_client.identity import fetch_registrations
from party_client.remote import Coordinator, connected
from protocols.documents import (
    ANSWER_CLASS,
    ANSWER_PROBABILITY,
    ANSWERS,
    MODEL_RELEASE,
    MODEL_SEALED,
    RELEASE_TO_NAMED,
    RELEASE_TO_OWNERS,
    DatasetManifest,
    JobTerms,
    Querier,
    Recipient,
    Registration,
    check_id,
)
from protocols.documents.terms import MAX_ANSWER_DIGITS
from protocols.errors import FormatError, SetupError
from protocols.objectives import LabelSummary, check_labels
from protocols.policy import AttestationPolicy

OBJECTIVE = "binary:logistic"  # the default objective

DEFAULT_PARAMS: dict[str, Any] = {
    "tree_method": "hist",
    "max_depth": 4,
    "eta": 0.1,
    "nthread": 2,
}


def default_eval_metric(objective: str) -> str:
    """The metric released metrics report unless the proposer names one."""
    if objective.startswith("binary:"):
        return "auc"
    if objective.startswith("multi:"):
        return "mlogloss"
    return "rmse"


def training_params(
    objective: str, params: Mapping[str, Any], labels: Sequence[LabelSummary]
) -> dict[str, Any]:
    """The XGBoost parameters of the terms: the defaults, the proposer's ``params``, a default
    ``eval_metric`` for the objective and, for ``multi:*`` objectives, ``num_class`` from the
    label summaries unless given.

    The terms' objective and seed are the ones training uses
    (:meth:`JobTerms.train_params`), so a different ``objective`` or ``seed``
    among ``params`` is refused rather than silently overridden.
    """
    if params.get("objective", objective) != objective:
        raise SetupError(
            f"the parameter objective={params['objective']!r} differs from the objective "
            f"{objective!r}, which training uses: choose it with --objective; nothing was "
            "proposed"
        )
    if "seed" in params:
        raise SetupError(
            "the parameter seed would be overridden by the terms' seed, which training uses: "
            "set it with --seed; nothing was proposed"
        )
    chosen = {**DEFAULT_PARAMS, **params}
    chosen.pop("objective", None)
    chosen.setdefault("eval_metric", default_eval_metric(objective))
    if objective.startswith("multi:") and "num_class" not in chosen:
        classes = [s.classes for s in labels if s.classes is not None]
        if classes:
            chosen["num_class"] = max(classes)
    return chosen


def check_terms(terms: JobTerms, manifests: Mapping[str, DatasetManifest]) -> None:
    """Refuse (SetupError, DatasetError) terms that the enclave or any verifier would refuse,
    given the data sets' signed manifests; each message names the data set."""
    holders = [d for d, _ in terms.datasets if manifests[d].label is not None]
    if terms.join == "vertical" and len(holders) != 1:
        if not holders:
            raise SetupError(
                f"no data set of this vertical job has a label: the party holding the label "
                f"column {terms.label!r} uploads its data set with --label {terms.label}; "
                "nothing was proposed"
            )
        raise SetupError(
            f"data sets {', '.join(map(repr, holders))} each have a label, and a vertical job "
            "takes the label from one: the other parties upload theirs without --label; "
            "nothing was proposed"
        )
    for dataset_id in holders:
        summary = manifests[dataset_id].label
        assert summary is not None
        if summary.column != terms.label:
            raise SetupError(
                f"data set {dataset_id!r} was uploaded with the label column {summary.column!r}, "
                f"not {terms.label!r}: propose with --label {summary.column} or upload it again; "
                "nothing was proposed"
            )
        check_labels(terms.objective, summary, terms.params, f"data set {dataset_id!r}")
    rows = {d: manifests[d].row_count for d, _ in terms.datasets}
    at_most = min(rows.values()) if terms.join == "vertical" else sum(rows.values())
    if at_most < terms.min_rows:
        where = (
            f"the join has at most {at_most} rows (data set "
            f"{min(rows, key=lambda d: rows[d])!r} has {at_most})"
            if terms.join == "vertical"
            else f"the data sets have {at_most} rows in all"
        )
        raise SetupError(
            f"{where}, fewer than --min-rows {terms.min_rows}: the enclave would refuse to "
            "train; nothing was proposed"
        )
    try:
        JobTerms.from_dict(terms.to_dict())  # every rule of JobTerms.verify
    except FormatError as exc:
        raise SetupError(f"{exc}; nothing was proposed") from None


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


def _by_name(
    home: PartyHome, names: list[str], registrations: dict[str, Registration]
) -> list[Registration]:
    """The registration of each name, checked against (or pinned as) the key known for it."""
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
        chosen.append(registration)
    return chosen


def _named_recipients(
    home: PartyHome, names: list[str], registrations: dict[str, Registration]
) -> list[Recipient]:
    return [
        Recipient(r.name, r.signing_key, r.hpke_key) for r in _by_name(home, names, registrations)
    ]


@dataclass(frozen=True)
class QueryGrant:
    """A party (by its registered name) that may query a sealed model, and how many rows:
    ``total`` over the model's life, at most ``per_day`` per UTC day (None: no daily limit).
    `detente party propose --query NAME=ROWS[/PER_DAY]`."""

    name: str
    total: int
    per_day: int | None = None


def check_sealing(
    sealed: bool,
    outputs: Sequence[str],
    grants: Sequence[QueryGrant],
    answer: str,
    digits: int | None,
    objective: str,
) -> None:
    """Refuse (SetupError) what the terms' own rules would refuse of a sealed model, naming
    the `detente party propose` option to change."""
    nothing = "; nothing was proposed"
    if not sealed:
        if grants or answer != ANSWER_PROBABILITY or digits is not None:
            raise SetupError(
                "--query, --answer and --digits describe a sealed model, and this job releases "
                f"its model: add --sealed, or drop them{nothing}"
            )
        return
    if "model" in outputs:
        raise SetupError(
            "--sealed keeps the model in the enclave, and --output model would release it: "
            f"drop --output model{nothing}"
        )
    if not grants:
        raise SetupError(
            "--sealed needs at least one --query NAME=ROWS[/PER_DAY]: the parties that may "
            f"query the model, and how many rows{nothing}"
        )
    names = [g.name for g in grants]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SetupError(f"--query names {', '.join(map(repr, twice))} twice{nothing}")
    for g in grants:
        if g.total < 1 or (g.per_day is not None and not 1 <= g.per_day <= g.total):
            raise SetupError(
                f"--query {g.name}={g.total}{'' if g.per_day is None else f'/{g.per_day}'}: "
                f"ROWS must be at least 1 and PER_DAY from 1 to ROWS{nothing}"
            )
    if answer not in ANSWERS:
        raise SetupError(f"--answer {answer!r} is not one of {', '.join(ANSWERS)}{nothing}")
    if answer == ANSWER_CLASS and not objective.startswith(("binary:", "multi:")):
        raise SetupError(
            f"--answer class needs a classification --objective (binary:… or multi:…), not "
            f"{objective}: use --answer probability{nothing}"
        )
    if digits is not None:
        if answer == ANSWER_CLASS:
            raise SetupError(
                f"--digits rounds probabilities, and --answer class returns classes: drop "
                f"--digits{nothing}"
            )
        if not 0 <= digits <= MAX_ANSWER_DIGITS:
            raise SetupError(f"--digits must be from 0 to {MAX_ANSWER_DIGITS}{nothing}")


def check_live_metrics(live: bool, outputs: Sequence[str], metrics_every: int | None) -> None:
    """Refuse (SetupError) live metrics the terms would refuse, naming the option to add."""
    if live and ("metrics" not in outputs or metrics_every is None):
        raise SetupError(
            "--live-metrics shows the released metrics to the coordinator at their stride: add "
            + " and ".join(
                o
                for o, needed in (
                    ("--output metrics", "metrics" not in outputs),
                    ("--metrics-every N", metrics_every is None),
                )
                if needed
            )
            + "; nothing was proposed"
        )


def _queriers(
    home: PartyHome, grants: Sequence[QueryGrant], registrations: dict[str, Registration]
) -> list[Querier]:
    found = _by_name(home, [g.name for g in grants], registrations)
    return [
        Querier(r.name, r.signing_key, r.hpke_key, g.total, g.per_day)
        for r, g in zip(found, grants, strict=True)
    ]


def propose(
    home: PartyHome,
    policy: AttestationPolicy,
    dataset_ids: list[str],
    label: str | None,
    id_column: str | None,
    rounds: int,
    params: dict[str, Any],
    seed: int,
    recipients: list[str] | None,
    outputs: list[str],
    job_id: str | None = None,
    expires_in: int = 24 * 3600,
    max_seconds: int | None = None,
    *,
    join: str = "horizontal",
    id_columns: Mapping[str, str] | None = None,
    objective: str = OBJECTIVE,
    min_rows: int = 1,
    validation_fraction: float = 0.0,
    early_stopping_rounds: int | None = None,
    metrics_every: int | None = None,
    model_format: str = "json",
    sealed: bool = False,
    queriers: Sequence[QueryGrant] = (),
    answer: str = ANSWER_PROBABILITY,
    digits: int | None = None,
    live_metrics: bool = False,
    remote: Coordinator | None = None,
    dry_run: bool = False,
) -> JobTerms:
    """Write and sign job terms naming the data sets, the enclave and the recipients.

    ``dataset_ids`` are ids, or ``owner/dataset-id`` to check each owner's
    registered name. With ``dry_run`` everything is checked and the terms are
    returned, but nothing is sent.

    ``id_column`` names the id column of every data set, ``id_columns`` that of
    single ones (a vertical join needs one for each). ``label`` may be None when
    the data sets' manifests agree on the label column. ``params`` are XGBoost
    parameters (see :func:`training_params` for what is added). Nothing is
    proposed if :func:`check_terms` refuses the terms.

    Without ``recipients`` the terms release to the data owners
    (``release.to = "owners"``): one recipient per owner, and proposing fails
    if any owner's registration is missing.

    ``sealed`` keeps the model in the enclave (``outputs`` must not name
    ``model``): the parties of ``queriers`` (by registered name, checked
    against the keys pinned for those names) may query it within their row
    budgets, and get ``answer`` (``probability``, rounded to ``digits``
    decimals if given, or ``class``). :func:`check_sealing` refuses what the
    terms would.

    ``live_metrics`` lets the enclave report the metrics to the coordinator in
    the clear while it trains (``release.live_metrics``); it needs ``metrics``
    among ``outputs`` and a ``metrics_every`` stride.
    """
    check_sealing(sealed, outputs, queriers, answer, digits, objective)
    check_live_metrics(live_metrics, outputs, metrics_every)
    enclave, _ = home.attested_enclave(policy)
    signing = home.signing_key()
    owners = {d.rpartition("/")[2]: d.rpartition("/")[0] for d in dataset_ids}
    if len(owners) != len(dataset_ids):
        raise SetupError("a data set is named twice: name each once; nothing was proposed")
    dataset_ids = list(owners)
    unknown = sorted(set(id_columns or {}) - set(dataset_ids))
    if unknown:
        raise SetupError(
            f"--id names the data set(s) {', '.join(map(repr, unknown))}, which the job does "
            "not: name them with --dataset too, or correct the id"
        )
    with connected(home, remote) as coordinator:
        entries = []
        manifests: dict[str, DatasetManifest] = {}
        for dataset_id in dataset_ids:
            envelope, manifest = fetch_manifest(coordinator, dataset_id)
            entries.append((dataset_id, envelope.digest))
            manifests[dataset_id] = manifest
        labels = [m.label for m in manifests.values() if m.label is not None]
        label = label or _label_of(labels)
        registrations = fetch_registrations(coordinator)
        _check_owners(owners, manifests, registrations)
        if recipients:
            chosen = _named_recipients(home, recipients, registrations)
            release_to = RELEASE_TO_NAMED
        else:
            chosen = _owner_recipients(home, list(manifests.values()), registrations)
            release_to = RELEASE_TO_OWNERS
        granted = _queriers(home, queriers, registrations) if sealed else []
        terms = JobTerms(
            job_id=check_id(job_id or f"job-{secrets.token_hex(6)}", "job id"),
            datasets=entries,
            join=join,
            objective=objective,
            label=label,
            params=training_params(objective, params, labels),
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
            id_columns=dict(id_columns or {}),
            min_rows=min_rows,
            validation_fraction=validation_fraction,
            early_stopping_rounds=early_stopping_rounds,
            metrics_every=metrics_every,
            model_format=model_format,
            model=MODEL_SEALED if sealed else MODEL_RELEASE,
            queriers=granted,
            answer=answer,
            answer_digits=digits,
            live_metrics=live_metrics,
        )
        check_terms(terms, manifests)
        if not dry_run:
            coordinator.propose(terms.sign(signing).to_bytes())
    return terms


def _check_owners(
    owners: Mapping[str, str],
    manifests: Mapping[str, DatasetManifest],
    registrations: dict[str, Registration],
) -> None:
    """Each ``owner/dataset-id`` named: the owner is the registered name of the key that
    signed the data set's manifest."""
    for dataset_id, owner in owners.items():
        if not owner:
            continue
        registration = registrations.get(manifests[dataset_id].owner_key.hex)
        found = registration.name if registration is not None else None
        if found != owner:
            raise SetupError(
                f"data set {dataset_id!r} is owned by "
                f"{repr(found) if found else 'an unregistered key'}, not {owner!r}: check the "
                f"name in {owner}/{dataset_id}; nothing was proposed"
            )


def _label_of(labels: list[LabelSummary]) -> str:
    """The label column the manifests agree on, when the proposer names none."""
    columns = sorted({s.column for s in labels})
    if len(columns) != 1:
        found = f"they name {', '.join(map(repr, columns))}" if columns else "none has a label"
        raise SetupError(f"name the label column with --label: {found}")
    return columns[0]
