"""Job files: a job's terms written down in TOML, checked as `detente party propose`'s options are.

A job file says everything a proposal's options say (see :data:`TEMPLATE`,
which `detente party propose --template` writes); :func:`load_job_file`
reads it with :mod:`tomllib` and refuses unknown keys by name, values of the
wrong type and values the options would refuse (:meth:`JobSpec.check`, the
same checks the options go through). What is left to check needs the
coordinator (the data sets' signed manifests, the registrations):
:func:`party_client.proposal.propose` does it, with ``dry_run`` or not.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from party_client.proposal import QueryGrant
from protocols.documents.terms import ANSWERS, JOINS, MAX_ANSWER_DIGITS, MODEL_FORMATS, OUTPUTS
from protocols.errors import SetupError
from protocols.objectives import OBJECTIVES

if TYPE_CHECKING:
    from party_client.consent import Review
    from party_client.home import PartyHome
    from party_client.remote import Coordinator
    from protocols.documents import JobTerms
    from protocols.policy import AttestationPolicy

MODELS = ("released", "sealed")


class JobFileError(SetupError):
    """A job file (or the options) that cannot make terms: the message names the key."""


@dataclass
class JobSpec:
    """What a proposal says, from a job file or from `detente party propose`'s options.

    ``datasets`` are data set ids or ``owner/dataset-id`` (the owner checked by
    its registered name). ``source`` names where the values came from, for
    the messages ("job.toml", "the options").
    """

    datasets: list[str]
    job_id: str | None = None
    join: str = "horizontal"
    label: str | None = None
    id_column: str | None = None
    id_columns: dict[str, str] = field(default_factory=dict)
    objective: str = "binary:logistic"
    rounds: int = 200
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    min_rows: int = 1
    max_seconds: int | None = None
    validation_fraction: float = 0.0
    early_stopping_rounds: int | None = None
    metrics_every: int | None = None
    live_metrics: bool = False
    recipients: list[str] | None = None
    outputs: list[str] | None = None  # None: model, or nothing for a sealed model
    model_format: str = "json"
    sealed: bool = False
    queriers: list[QueryGrant] = field(default_factory=list)
    answer: str = "probability"
    digits: int | None = None
    source: str = "the options"

    def released_outputs(self) -> list[str]:
        if self.outputs is not None:
            return list(self.outputs)
        return [] if self.sealed else ["model"]

    def check(self) -> None:
        """Refuse (JobFileError) what `detente party propose`'s options refuse, naming the
        key; the rules that need the data sets' manifests are checked when proposing."""
        if not self.datasets:
            self._bad("datasets", "name at least one data set (its id, or OWNER/ID)")
        _choice(self, "join", self.join, JOINS)
        _choice(self, "objective", self.objective, OBJECTIVES)
        _choice(self, "model_format", self.model_format, MODEL_FORMATS)
        _choice(self, "answer", self.answer, ANSWERS)
        for item in self.released_outputs():
            _choice(self, "outputs", item, OUTPUTS)
        for name, value, low in (
            ("rounds", self.rounds, 1),
            ("min_rows", self.min_rows, 1),
            ("max_seconds", self.max_seconds, 1),
            ("early_stopping_rounds", self.early_stopping_rounds, 1),
            ("metrics_every", self.metrics_every, 1),
            ("digits", self.digits, 0),
        ):
            if value is not None and value < low:
                self._bad(name, f"must be at least {low}, not {value}")
        if self.digits is not None and self.digits > MAX_ANSWER_DIGITS:
            self._bad("digits", f"must be at most {MAX_ANSWER_DIGITS}, not {self.digits}")
        if not 0.0 <= self.validation_fraction <= 0.5:
            self._bad(
                "validation_fraction", f"must be from 0 to 0.5, not {self.validation_fraction}"
            )
        ids = {d.rpartition("/")[2] for d in self.datasets}
        for dataset_id in self.id_columns:
            if dataset_id not in ids:
                self._bad(
                    "id_columns",
                    f"names data set {dataset_id!r}, which datasets does not "
                    f"({', '.join(sorted(ids))})",
                )

    def _bad(self, key: str, why: str) -> None:
        raise JobFileError(f"{self.source}: {key} {why}; nothing was proposed")


def _choice(spec: JobSpec, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        spec._bad(key, f"is {value!r}, not one of {', '.join(choices)}")


# --------------------------------------------------------------------------- the file

# Each table's keys: (the JobSpec field, the type a value must have).
Keys = dict[str, tuple[str, tuple[type, ...]]]
_TOP: Keys = {
    "job_id": ("job_id", (str,)),
    "datasets": ("datasets", (list,)),
    "join": ("join", (str,)),
    "label": ("label", (str,)),
    "id_column": ("id_column", (str,)),
    "objective": ("objective", (str,)),
    "rounds": ("rounds", (int,)),
    "seed": ("seed", (int,)),
    "min_rows": ("min_rows", (int,)),
    "max_seconds": ("max_seconds", (int,)),
}
_VALIDATION: Keys = {
    "fraction": ("validation_fraction", (float, int)),
    "early_stopping_rounds": ("early_stopping_rounds", (int,)),
    "metrics_every": ("metrics_every", (int,)),
    "live_metrics": ("live_metrics", (bool,)),
}
_RELEASE: Keys = {
    "recipients": ("recipients", (list,)),
    "outputs": ("outputs", (list,)),
    "model_format": ("model_format", (str,)),
}
_SEALED: Keys = {"answer": ("answer", (str,)), "digits": ("digits", (int,))}
_KINDS = {bool: "true or false", str: "text", int: "whole number", float: "number", list: "list"}
_TABLES = ("id_columns", "params", "validation", "release", "sealed")


def load_job_file(path: Path) -> JobSpec:
    """Read and check a job file (see :data:`TEMPLATE`); JobFileError names what is wrong."""
    where = str(path)
    try:
        doc = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise JobFileError(f"cannot read the job file {where}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise JobFileError(f"{where} is not valid TOML: {exc}; nothing was proposed") from None
    spec = JobSpec(datasets=[], source=where)
    _unknown(where, "", doc, [*_TOP, "model", *_TABLES])
    _fill(spec, where, "", doc, _TOP)
    spec.datasets = _strings(where, "datasets", doc.get("datasets", []))
    spec.id_columns = _mapping(where, "id_columns", doc.get("id_columns", {}), str)
    spec.params = dict(_mapping(where, "params", doc.get("params", {}), object))
    for table, keys in (("validation", _VALIDATION), ("release", _RELEASE)):
        section = _mapping(where, table, doc.get(table, {}), object)
        _unknown(where, table, section, list(keys))
        _fill(spec, where, table, section, keys)
    release = doc.get("release", {})
    if "recipients" in release:
        spec.recipients = _strings(where, "[release] recipients", release["recipients"])
    if "outputs" in release:
        spec.outputs = _strings(where, "[release] outputs", release["outputs"])
    spec.validation_fraction = float(spec.validation_fraction)
    model = doc.get("model", "released")
    if model not in MODELS:
        raise JobFileError(f"{where}: model is {model!r}, not one of {', '.join(MODELS)}")
    spec.sealed = model == "sealed"
    _sealed(spec, where, doc)
    spec.check()
    return spec


def _sealed(spec: JobSpec, where: str, doc: dict[str, Any]) -> None:
    """The [sealed] table: only with model = "sealed", which needs it."""
    if "sealed" not in doc:
        if spec.sealed:
            raise JobFileError(
                f'{where}: model = "sealed" needs a [sealed.queriers] table naming who may '
                "query the model and how many rows; nothing was proposed"
            )
        return
    if not spec.sealed:
        raise JobFileError(
            f'{where}: the [sealed] table describes a sealed model, and model is "released": '
            'set model = "sealed", or remove [sealed]; nothing was proposed'
        )
    section = _mapping(where, "sealed", doc["sealed"], object)
    _unknown(where, "sealed", section, [*_SEALED, "queriers"])
    _fill(spec, where, "sealed", section, _SEALED)
    for name, budget in _mapping(
        where, "sealed.queriers", section.get("queriers", {}), object
    ).items():
        spec.queriers.append(_grant(where, name, budget))


def _grant(where: str, name: str, budget: Any) -> QueryGrant:
    """``NAME = ROWS`` or ``NAME = { rows = ROWS, per_day = PER_DAY }``."""
    if isinstance(budget, int) and not isinstance(budget, bool):
        return QueryGrant(name, budget)
    if isinstance(budget, dict):
        _unknown(where, f"sealed.queriers.{name}", budget, ["rows", "per_day"])
        rows, per_day = budget.get("rows"), budget.get("per_day")
        if isinstance(rows, int) and _is_int(rows) and (per_day is None or _is_int(per_day)):
            return QueryGrant(name, rows, per_day)
    raise JobFileError(
        f"{where}: [sealed.queriers] {name} must be a number of rows, or "
        f"{{ rows = ROWS, per_day = PER_DAY }}, not {budget!r}; nothing was proposed"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unknown(where: str, table: str, doc: dict[str, Any], known: list[str]) -> None:
    unknown = sorted(set(doc) - set(known))
    if unknown:
        place = f"[{table}] " if table else ""
        raise JobFileError(
            f"{where}: unknown key(s) {place}{', '.join(map(repr, unknown))}; the keys here are "
            f"{', '.join(known)} (see `detente party propose --template`); nothing was proposed"
        )


def _fill(
    spec: JobSpec,
    where: str,
    table: str,
    doc: dict[str, Any],
    keys: Keys,
) -> None:
    for key, (attr, types) in keys.items():
        if key not in doc:
            continue
        value = doc[key]
        if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
            place = f"[{table}] " if table else ""
            kind = _KINDS[types[0]]
            raise JobFileError(
                f"{where}: {place}{key} must be a {kind}, not {value!r}; nothing was proposed"
            )
        setattr(spec, attr, value)


def _strings(where: str, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise JobFileError(f"{where}: {key} must be a list of strings; nothing was proposed")
    return list(value)


def _mapping(where: str, key: str, value: Any, kind: type) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(v, kind) for v in value.values()):
        what = "a table" if kind is object else f"a table of {kind.__name__} values"
        raise JobFileError(f"{where}: {key} must be {what}; nothing was proposed")
    return dict(value)


@dataclass(frozen=True)
class Proposal:
    """What :func:`propose_spec` did: the terms, whether they were sent, and for a dry run
    the review any party would see (its ``job.state`` is ``"dry run"``) and the checks
    that passed."""

    terms: JobTerms
    proposed: bool
    review: Review | None = None
    checks: list[str] = field(default_factory=list)


def propose_spec(
    home: PartyHome,
    policy: AttestationPolicy,
    spec: JobSpec,
    *,
    dry_run: bool = False,
    remote: Coordinator | None = None,
) -> Proposal:
    """Check ``spec`` (:meth:`JobSpec.check`), make its terms and check them against the
    data sets' signed manifests and the registrations; propose them unless ``dry_run``."""
    from party_client import consent, proposal
    from party_client.job_control import JobView
    from party_client.remote import connected

    spec.check()
    # What needs no coordinator is refused before any connection is made.
    proposal.check_sealing(
        spec.sealed,
        spec.released_outputs(),
        spec.queriers,
        spec.answer,
        spec.digits,
        spec.objective,
    )
    proposal.check_live_metrics(spec.live_metrics, spec.released_outputs(), spec.metrics_every)
    with connected(home, remote) as coordinator:
        terms = proposal.propose(
            home,
            policy,
            spec.datasets,
            spec.label,
            spec.id_column,
            spec.rounds,
            dict(spec.params),
            spec.seed,
            spec.recipients,
            spec.released_outputs(),
            spec.job_id,
            max_seconds=spec.max_seconds,
            join=spec.join,
            id_columns=spec.id_columns,
            objective=spec.objective,
            min_rows=spec.min_rows,
            validation_fraction=spec.validation_fraction,
            early_stopping_rounds=spec.early_stopping_rounds,
            metrics_every=spec.metrics_every,
            model_format=spec.model_format,
            sealed=spec.sealed,
            queriers=spec.queriers,
            answer=spec.answer,
            digits=spec.digits,
            live_metrics=spec.live_metrics,
            remote=coordinator,
            dry_run=dry_run,
        )
        if not dry_run:
            return Proposal(terms, True)
        # Signed here to be reviewed as an owner would see it; never sent.
        envelope = terms.sign(home.signing_key())
        view = JobView(terms.job_id, DRY_RUN, envelope, terms, [], [], [], "", 0, b"")
        reviewed = consent.review(home, policy, view, remote=coordinator)
    owners = list(dict.fromkeys(d.owner_key for d in reviewed.datasets))
    reviewed.job = JobView(terms.job_id, DRY_RUN, envelope, terms, owners, [], [], "", 0, b"")
    reviewed.refusals = [
        r for r in reviewed.refusals if not r.startswith(f"job {terms.job_id!r} is")
    ]
    return Proposal(terms, False, reviewed, _checks(terms, reviewed))


DRY_RUN = "dry run"


def _checks(terms: JobTerms, reviewed: Review) -> list[str]:
    """What a dry run checked, in plain words (each passed, or the dry run raised)."""
    rows = ", ".join(f"{d.dataset_id} ({d.rows} rows)" for d in reviewed.datasets)
    where = "one data set holds it" if terms.join == "vertical" else "every data set holds it"
    return [
        f"the enclave measurement {terms.allowed_mrenclaves[0][:16]}… is the one you attested, "
        "and your policy allows it",
        f"each data set's manifest is signed by its owner: {rows}",
        f"the objective {terms.objective} suits each data set's label summary",
        f"the label {terms.label!r} is where a {terms.join} job needs it ({where})",
        f"the {terms.join} join has at least {terms.min_rows} rows",
        "every recipient and querier is registered under the keys you pinned for its name",
        "the terms pass every rule the enclave applies to terms",
    ]


def jobfile_template() -> str:
    """The commented job file `detente party propose --template` writes (:data:`TEMPLATE`)."""
    return TEMPLATE


def write_template(path: Path) -> None:
    """Write :data:`TEMPLATE` to ``path`` (mode 0644), refusing to replace a file."""
    try:
        with open(path, "x") as f:
            f.write(TEMPLATE)
    except FileExistsError:
        raise JobFileError(f"{path} exists: choose another file name, or remove it first") from None


TEMPLATE = """\
# A Detente job file: the terms of one XGBoost job over several parties' data.
#
#   detente party propose job.toml --dry-run   # the terms in plain words; nothing is sent
#   detente party propose job.toml             # sign and propose them
#
# Every data owner then reads the terms (`detente party show JOB`) and approves
# (`detente party approve JOB`) or rejects them (`detente party reject JOB --reason ...`).
# The job runs only in an enclave your attestation policy allows (`detente party
# attest`), and only once every owner has approved these exact terms.
# Unknown keys are refused by name. Lines starting with # are comments.

# The job's id (letters, digits, . _ -); omit it for a random one.
# job_id = "credit-2026-01"

# The data sets, in join order: their ids, or OWNER/ID to check the owner's name.
# (`detente party datasets` lists yours and those of your jobs.)
datasets = ["party1/party1-data", "party2/party2-data"]

# horizontal: the data sets' rows together (same columns);
# vertical: their columns, on the rows whose ids all of them hold (then name the ids).
join = "horizontal"

# The label column (omit it when the data sets' manifests agree on one).
label = "default.payment.next.month"

# The identifier column of every data set (not a feature)...
id_column = "ID"
# ...and of single data sets, where theirs differs:
# id_columns = { "party1-data" = "ID", "party2-data" = "customer_id" }

# The XGBoost objective: binary:logistic, multi:softprob, reg:squarederror, ...
objective = "binary:logistic"
rounds = 50         # boosting rounds
seed = 0            # the training seed (also the validation split's)
min_rows = 100      # refuse to train on fewer (joined) rows than this
# max_seconds = 3600  # the longest the job may run (default: the coordinator's limit)

# released: the model goes to the recipients below, encrypted to each of them;
# sealed: it stays in the enclave, and the parties of [sealed.queriers] query it.
model = "released"

# XGBoost parameters (objective and seed are set above; num_class is found from
# the labels of a multi: objective). Defaults: tree_method hist, max_depth 4, eta 0.1.
[params]
max_depth = 4
eta = 0.1

# Rows held out inside the enclave to measure the model (none by default).
[validation]
fraction = 0.2               # 0 to 0.5 of the rows, by seed (per class for classification)
early_stopping_rounds = 10   # stop after this many rounds without gain (needs a fraction)
metrics_every = 10           # released metrics every N rounds (default: at the end)
live_metrics = false         # true: the enclave shows those metrics to the coordinator
                             # IN THE CLEAR while it trains (its operator and dashboard)

# Who receives what. Without recipients, exactly the data owners receive the outputs.
[release]
# recipients = ["party1", "party2"]
outputs = ["model", "metrics"]   # model, metrics, importance, predictions (each owner its rows')
model_format = "json"            # json or ubj

# Only with model = "sealed": who may query the model, and how many rows.
# [sealed]
# answer = "probability"   # or "class" (classification only)
# digits = 3               # round probabilities to this many decimals
# [sealed.queriers]
# party1 = 10000                              # rows in all
# party2 = { rows = 10000, per_day = 1000 }   # and at most this many per UTC day
"""
