"""Job terms, approvals, and the consent rules over them (every owner; release to owners).

Formats: protocols/SPEC.md §3.4–3.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocols import canonical, statements
from protocols.canonical import digest_field
from protocols.canonical import field as get
from protocols.documents.common import VERSION, check_id, check_version, party_fingerprint
from protocols.errors import ConsentError, FormatError, SignatureError
from protocols.keys import HpkePublicKey, SigningKey, VerifyKey
from protocols.objectives import OBJECTIVES
from protocols.statements import Envelope


@dataclass(frozen=True)
class Recipient:
    name: str
    signing_key: VerifyKey
    hpke_key: HpkePublicKey

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "signing_key": self.signing_key.hex,
            "hpke_key": self.hpke_key.hex,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> Recipient:
        if not isinstance(doc, dict):
            raise FormatError("job terms recipient must be an object")
        what = "job terms recipient"
        return cls(
            get(doc, "name", str, what),
            VerifyKey.from_hex(get(doc, "signing_key", str, what)),
            HpkePublicKey.from_hex(get(doc, "hpke_key", str, what)),
        )

    @property
    def fingerprint(self) -> str:
        return party_fingerprint(self.signing_key, self.hpke_key)


@dataclass(frozen=True)
class Querier:
    """A party the terms let query a sealed model, and how many rows it may score.

    ``total`` rows over the model's life, and at most ``per_day`` rows per UTC
    day by the enclave's clock (None: no daily limit). Answers are encrypted to
    ``hpke_key``; queries must be signed by ``signing_key``.
    """

    name: str
    signing_key: VerifyKey
    hpke_key: HpkePublicKey
    total: int
    per_day: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "signing_key": self.signing_key.hex,
            "hpke_key": self.hpke_key.hex,
            "total_rows": self.total,
            "rows_per_day": self.per_day,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> Querier:
        if not isinstance(doc, dict):
            raise FormatError("job terms querier must be an object")
        what = "job terms querier"
        total = get(doc, "total_rows", int, what)
        per_day = doc.get("rows_per_day")
        if isinstance(total, bool) or total < 1:
            raise FormatError("job terms querier total_rows must be a positive integer")
        if per_day is not None and (
            isinstance(per_day, bool) or not isinstance(per_day, int) or not 1 <= per_day <= total
        ):
            raise FormatError(
                "job terms querier rows_per_day must be null or an integer from 1 to total_rows"
            )
        return cls(
            get(doc, "name", str, what),
            VerifyKey.from_hex(get(doc, "signing_key", str, what)),
            HpkePublicKey.from_hex(get(doc, "hpke_key", str, what)),
            total,
            per_day,
        )


JOINS = ("horizontal", "vertical")
# predictions: each data owner's predictions on its own rows (horizontal jobs only).
OUTPUTS = ("model", "metrics", "importance", "predictions")
MODEL_FORMATS = ("json", "ubj")
MAX_VALIDATION_FRACTION = 0.5
# Who the terms release to: exactly the data owners, or the recipients they name.
RELEASE_TO_OWNERS = "owners"
RELEASE_TO_NAMED = "named"
RELEASE_TO = (RELEASE_TO_OWNERS, RELEASE_TO_NAMED)
MAX_ROUNDS = 100_000
# What becomes of the model: encrypted to the recipients, or kept in the enclave
# to be queried (docs/protocol.md §7).
MODEL_RELEASE = "release"
MODEL_SEALED = "sealed"
MODEL_DISPOSITIONS = (MODEL_RELEASE, MODEL_SEALED)
# What a query of a sealed model returns: the model's output (probabilities, or
# values for regression), optionally rounded; or, for classification, the class.
ANSWER_PROBABILITY = "probability"
ANSWER_CLASS = "class"
ANSWERS = (ANSWER_PROBABILITY, ANSWER_CLASS)
MAX_ANSWER_DIGITS = 15


@dataclass(frozen=True)
class JobTerms:
    """What every data owner approves, byte for byte (docs/protocol.md §4)."""

    job_id: str
    datasets: list[tuple[str, str]]  # (dataset id, manifest digest), in join order
    join: str
    objective: str
    label: str
    params: dict[str, Any]
    num_rounds: int
    seed: int
    allowed_mrenclaves: list[str]
    outputs: list[str]
    recipients: list[Recipient]
    expires_at: int
    id_column: str | None = None
    proposer: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    release_to: str = RELEASE_TO_NAMED
    max_seconds: int | None = None
    # Per data set id column, overriding ``id_column`` (vertical jobs name one for each).
    id_columns: dict[str, str] = field(default_factory=dict)
    min_rows: int = 1  # fewer joined rows than this: the job fails before training
    validation_fraction: float = 0.0  # held out inside the enclave by seed
    early_stopping_rounds: int | None = None  # on the validation set
    metrics_every: int | None = None  # released metrics every N rounds (None: at the end)
    model_format: str = "json"
    # Sealed models (absent from the document when the model is released).
    model: str = MODEL_RELEASE
    queriers: list[Querier] = field(default_factory=list)
    answer: str = ANSWER_PROBABILITY
    answer_digits: int | None = None  # round answers to this many decimals (None: exact)
    # The enclave reports the metrics to the coordinator in the clear while it trains, at the
    # metrics stride (protocols.live_metrics); absent from the document when off.
    live_metrics: bool = False

    @property
    def sealed(self) -> bool:
        return self.model == MODEL_SEALED

    def querier(self, key: VerifyKey) -> Querier | None:
        """The querier whose signing key is ``key``, or None."""
        return next((q for q in self.queriers if q.signing_key == key), None)

    def id_column_of(self, dataset_id: str) -> str | None:
        """The id column of ``dataset_id``: its own if the terms name one, else ``id_column``."""
        return self.id_columns.get(dataset_id, self.id_column)

    def to_dict(self) -> dict[str, Any]:
        datasets = []
        for dataset_id, digest in self.datasets:
            entry = {"dataset_id": dataset_id, "manifest_digest": digest}
            if dataset_id in self.id_columns:
                entry["id_column"] = self.id_columns[dataset_id]
            datasets.append(entry)
        doc = {
            "version": VERSION,
            "job_id": self.job_id,
            "datasets": datasets,
            "join": self.join,
            "objective": self.objective,
            "label": self.label,
            "id_column": self.id_column,
            "params": self.params,
            "num_rounds": self.num_rounds,
            "seed": self.seed,
            "allowed_mrenclaves": self.allowed_mrenclaves,
            "release": {
                "outputs": self.outputs,
                "recipients": [r.to_dict() for r in self.recipients],
                "to": self.release_to,
                **({"live_metrics": True} if self.live_metrics else {}),
            },
            "expires_at": self.expires_at,
            "max_seconds": self.max_seconds,
            "proposer": self.proposer,
            "training": {
                "min_rows": self.min_rows,
                "validation_fraction": self.validation_fraction,
                "early_stopping_rounds": self.early_stopping_rounds,
                "metrics_every": self.metrics_every,
                "model_format": self.model_format,
            },
        }
        # Released-model terms keep the document (and digest) they had before sealing existed.
        if self.sealed or self.queriers:
            doc["model"] = {
                "disposition": self.model,
                "queriers": [q.to_dict() for q in self.queriers],
                "answer": self.answer,
                "digits": self.answer_digits,
            }
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> JobTerms:
        what = "job terms"
        check_version(doc, what)
        datasets, id_columns = _parse_datasets(doc)
        join = get(doc, "join", str, what)
        if join not in JOINS:
            raise FormatError(f"job terms join {join!r} is not one of {', '.join(JOINS)}")
        release = get(doc, "release", dict, what)
        outputs, recipients, release_to = _parse_release(release)
        live_metrics = release.get("live_metrics", False)
        if not isinstance(live_metrics, bool):
            raise FormatError("job terms release.live_metrics must be true or false")
        id_column = doc.get("id_column")
        if id_column is not None and not isinstance(id_column, str):
            raise FormatError("job terms id_column must be a string or null")
        rounds = get(doc, "num_rounds", int, what)
        if not 1 <= rounds <= MAX_ROUNDS:
            raise FormatError(f"job terms num_rounds must be 1–{MAX_ROUNDS}, got {rounds}")
        objective = get(doc, "objective", str, what)
        if objective not in OBJECTIVES:
            raise FormatError(
                f"job terms objective {objective!r} is not one of {', '.join(OBJECTIVES)}"
            )
        terms = cls(
            job_id=check_id(get(doc, "job_id", str, what), "job id"),
            datasets=datasets,
            join=join,
            objective=objective,
            label=get(doc, "label", str, what),
            params=get(doc, "params", dict, what),
            num_rounds=rounds,
            seed=get(doc, "seed", int, what),
            allowed_mrenclaves=[
                digest_field({"mrenclave": m}, "mrenclave", what)
                for m in get(doc, "allowed_mrenclaves", list, what)
            ],
            outputs=outputs,
            recipients=recipients,
            expires_at=get(doc, "expires_at", int, what),
            id_column=id_column,
            proposer=str(doc.get("proposer", "")),
            release_to=release_to,
            max_seconds=_optional_positive(doc, "max_seconds"),
            id_columns=id_columns,
            live_metrics=live_metrics,
            **_parse_training(doc.get("training", {})),
            **_parse_model(doc.get("model", {"disposition": MODEL_RELEASE})),
        )
        terms._check_consistent()
        return terms

    def _check_consistent(self) -> None:
        """Rules across fields: each raises FormatError saying what to change."""
        if self.join == "vertical":
            missing = [d for d, _ in self.datasets if self.id_column_of(d) is None]
            if missing:
                raise FormatError(
                    "a vertical job names the id column of every data set; it lacks one for "
                    + ", ".join(repr(d) for d in missing)
                )
            if "predictions" in self.outputs:
                raise FormatError(
                    "a vertical job releases no predictions: they would tell each party which "
                    "of its ids were joined"
                )
        self._check_model()
        if self.live_metrics and ("metrics" not in self.outputs or self.metrics_every is None):
            raise FormatError(
                "job terms with live metrics report the released metrics at their stride: "
                "release 'metrics' and set training.metrics_every"
            )
        if self.early_stopping_rounds is not None and self.validation_fraction <= 0:
            raise FormatError("early_stopping_rounds needs a validation_fraction above 0")
        if self.objective.startswith("multi:"):
            num_class = self.params.get("num_class")
            if isinstance(num_class, bool) or not isinstance(num_class, int) or num_class < 2:
                raise FormatError(
                    f"{self.objective} needs the parameter num_class (an integer ≥ 2)"
                )

    def _check_model(self) -> None:
        if not self.sealed:
            if self.queriers:
                raise FormatError("job terms name queriers but release the model: seal it")
            return
        if "model" in self.outputs:
            raise FormatError(
                "job terms seal the model and also release it: leave 'model' out of the outputs"
            )
        if not self.queriers:
            raise FormatError("job terms seal the model but name no party that may query it")
        keys = [q.signing_key for q in self.queriers]
        if len(set(keys)) != len(keys) or len({q.name for q in self.queriers}) != len(keys):
            raise FormatError("job terms name a querier (name or key) twice")
        if self.answer == ANSWER_CLASS and not self.objective.startswith(("binary:", "multi:")):
            raise FormatError(
                f"answers of class only need a classification objective, not {self.objective}"
            )

    def train_params(self) -> dict[str, Any]:
        """The parameters ``xgboost.train`` gets: the terms' params, with the terms' objective
        and seed taking precedence (the rule the enclave and every plaintext check use)."""
        return {**self.params, "objective": self.objective, "seed": self.seed}

    def sign(self, key: SigningKey) -> Envelope:
        return statements.sign(statements.JOB_TERMS, self.to_dict(), key)

    @classmethod
    def verify(cls, envelope: Envelope) -> JobTerms:
        """Terms must be signed by the proposer key they name."""
        terms = cls.from_dict(statements.verify(envelope, statements.JOB_TERMS, None, "job terms"))
        if terms.proposer != envelope.signer.hex:
            raise SignatureError("job terms are not signed by the proposer they name")
        return terms


def _optional_positive(doc: dict[str, Any], name: str) -> int | None:
    value = doc.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise FormatError(f"job terms {name} must be a positive integer or null")
    return value


def _parse_datasets(doc: dict[str, Any]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    what = "job terms"
    datasets: list[tuple[str, str]] = []
    id_columns: dict[str, str] = {}
    for entry in get(doc, "datasets", list, what):
        if not isinstance(entry, dict):
            raise FormatError("job terms datasets must be objects")
        dataset_id = check_id(get(entry, "dataset_id", str, what), "dataset id")
        datasets.append((dataset_id, digest_field(entry, "manifest_digest", what)))
        if "id_column" in entry:
            id_columns[dataset_id] = get(entry, "id_column", str, what)
    if not datasets:
        raise FormatError("job terms name no data set")
    return datasets, id_columns


def _parse_release(release: dict[str, Any]) -> tuple[list[str], list[Recipient], str]:
    what = "job terms"
    outputs = get(release, "outputs", list, what)
    for output in outputs:
        if output not in OUTPUTS:
            raise FormatError(f"job terms output {output!r} is not one of {', '.join(OUTPUTS)}")
    if len(set(outputs)) != len(outputs):
        raise FormatError("job terms name an output twice")
    recipients = [Recipient.from_dict(r) for r in get(release, "recipients", list, what)]
    if not recipients:
        raise FormatError("job terms name no recipient")
    release_to = release.get("to", RELEASE_TO_NAMED)
    if release_to not in RELEASE_TO:
        raise FormatError(
            f"job terms release.to {release_to!r} is not one of {', '.join(RELEASE_TO)}"
        )
    keys = [r.signing_key for r in recipients]
    if len(set(keys)) != len(keys) or len({r.name for r in recipients}) != len(keys):
        raise FormatError("job terms name a recipient (name or key) twice")
    return [str(o) for o in outputs], recipients, release_to


def _parse_training(training: Any) -> dict[str, Any]:
    """The ``training`` object (absent in older terms: every default)."""
    if not isinstance(training, dict):
        raise FormatError("job terms training must be an object")
    min_rows = training.get("min_rows", 1)
    if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 1:
        raise FormatError("job terms training.min_rows must be a positive integer")
    fraction = training.get("validation_fraction", 0.0)
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not 0 <= fraction <= MAX_VALIDATION_FRACTION
    ):
        raise FormatError(
            "job terms training.validation_fraction must be a number from 0 to "
            f"{MAX_VALIDATION_FRACTION}"
        )
    model_format = training.get("model_format", "json")
    if model_format not in MODEL_FORMATS:
        raise FormatError(
            f"job terms training.model_format {model_format!r} is not one of "
            f"{', '.join(MODEL_FORMATS)}"
        )
    return {
        "min_rows": min_rows,
        "validation_fraction": float(fraction),
        "early_stopping_rounds": _optional_positive(training, "early_stopping_rounds"),
        "metrics_every": _optional_positive(training, "metrics_every"),
        "model_format": model_format,
    }


def _parse_model(model: Any) -> dict[str, Any]:
    """The ``model`` object (absent when the model is released)."""
    what = "job terms model"
    if not isinstance(model, dict):
        raise FormatError("job terms model must be an object")
    disposition = get(model, "disposition", str, what)
    if disposition not in MODEL_DISPOSITIONS:
        raise FormatError(
            f"job terms model.disposition {disposition!r} is not one of "
            f"{', '.join(MODEL_DISPOSITIONS)}"
        )
    if disposition == MODEL_RELEASE:
        if set(model) - {"disposition"}:
            raise FormatError("job terms that release the model give no other model fields")
        return {"model": MODEL_RELEASE}
    answer = get(model, "answer", str, what)
    if answer not in ANSWERS:
        raise FormatError(f"job terms model.answer {answer!r} is not one of {', '.join(ANSWERS)}")
    digits = model.get("digits")
    if digits is not None and (
        isinstance(digits, bool)
        or not isinstance(digits, int)
        or not 0 <= digits <= MAX_ANSWER_DIGITS
    ):
        raise FormatError(
            f"job terms model.digits must be null or an integer from 0 to {MAX_ANSWER_DIGITS}"
        )
    if digits is not None and answer == ANSWER_CLASS:
        raise FormatError("job terms model.digits rounds probabilities; class answers take none")
    return {
        "model": MODEL_SEALED,
        "queriers": [Querier.from_dict(q) for q in get(model, "queriers", list, what)],
        "answer": answer,
        "answer_digits": digits,
    }


@dataclass(frozen=True)
class Approval:
    """An owner's signature over the exact job terms (their payload digest)."""

    job_id: str
    terms_digest: str

    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "job_id": self.job_id, "terms_digest": self.terms_digest}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Approval:
        what = "job approval"
        check_version(doc, what)
        return cls(
            check_id(get(doc, "job_id", str, what), "job id"),
            digest_field(doc, "terms_digest", what),
        )

    def sign(self, key: SigningKey) -> Envelope:
        return statements.sign(statements.APPROVAL, self.to_dict(), key)


def check_release(terms: JobTerms, owners: set[VerifyKey]) -> None:
    """Raise ConsentError if terms that release to the owners name other recipients.

    With ``release.to = "owners"`` the recipients must be exactly the data
    owners (by signing key): nobody added, nobody left out. The enclave checks
    this against the signed manifests; each approving party checks it too.
    """
    if terms.release_to != RELEASE_TO_OWNERS:
        return
    named = {r.signing_key for r in terms.recipients}
    extra, missing = named - owners, owners - named
    if extra or missing:
        parts = []
        if missing:
            keys = ", ".join(sorted(k.hex[:16] + "…" for k in missing))
            parts.append(f"leave out the data owner(s) {keys}")
        if extra:
            names = ", ".join(sorted(r.name for r in terms.recipients if r.signing_key in extra))
            parts.append(f"add recipient(s) who own no data set of the job: {names}")
        raise ConsentError(
            f"job {terms.job_id!r} releases to its data owners, but its recipients "
            + " and ".join(parts)
        )


def check_approvals(
    terms_envelope: Envelope, owners: set[VerifyKey], approvals: list[Envelope]
) -> None:
    """Raise ConsentError unless every owner approved exactly these terms.

    Each approval must verify under its signer's key, name this job and carry
    the digest of these exact terms; approvals by non-owners are ignored.
    """
    approved: set[VerifyKey] = set()
    terms = JobTerms.from_dict(canonical.loads(terms_envelope.payload, "job terms"))
    for envelope in approvals:
        try:
            doc = statements.verify(envelope, statements.APPROVAL, None, "job approval")
            approval = Approval.from_dict(doc)
        except (SignatureError, FormatError) as exc:
            raise ConsentError(f"an approval of job {terms.job_id!r} is invalid: {exc}") from None
        if approval.job_id != terms.job_id or approval.terms_digest != terms_envelope.digest:
            raise ConsentError(
                f"the approval by {envelope.signer.hex[:16]}… is over different job terms "
                f"(digest {approval.terms_digest[:16]}…, these terms are "
                f"{terms_envelope.digest[:16]}…)"
            )
        approved.add(envelope.signer)
    missing = owners - approved
    if missing:
        raise ConsentError(
            f"job {terms.job_id!r} lacks the approval of "
            + ", ".join(sorted(k.hex[:16] + "…" for k in missing))
            + ": every data owner must run `detente party approve`"
        )
