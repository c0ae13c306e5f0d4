"""The signed documents of Detente: payload schemas and their checks.

Each document is a frozen dataclass with ``to_dict``/``from_dict``; it is
signed and verified only through :mod:`protocols.statements`. ``from_dict``
validates every field and raises FormatError naming the bad one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from protocols import canonical, statements
from protocols.canonical import field as get
from protocols.errors import AttestationError, ConsentError, FormatError, SignatureError
from protocols.keys import HpkePublicKey, Kem, SigningKey, VerifyKey
from protocols.objectives import LabelSummary
from protocols.statements import Envelope

VERSION = 1
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise FormatError(f"{what} must be 1–128 letters, digits, '.', '_' or '-', got {value!r}")
    return value


def _version(doc: dict[str, Any], what: str) -> None:
    if get(doc, "version", int, what) != VERSION:
        raise FormatError(f"{what} has unsupported version {doc['version']!r}")


def party_fingerprint(signing_key: VerifyKey, hpke_key: HpkePublicKey) -> str:
    """A party's fingerprint: SHA-256 over its two public keys (protocols/SPEC.md §3.1).

    Parties compare fingerprints out of band and pin them per name, so a
    coordinator cannot list another key under a name they know.
    """
    return canonical.sha256_hex(b"detente-party-fingerprint-v1\0" + signing_key.raw + hpke_key.raw)


@dataclass(frozen=True)
class Registration:
    """A party's self-signed statement of its name and keys."""

    name: str
    signing_key: VerifyKey
    hpke_key: HpkePublicKey

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "name": self.name,
            "signing_key": self.signing_key.hex,
            "hpke_key": self.hpke_key.hex,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Registration:
        what = "party registration"
        _version(doc, what)
        return cls(
            check_id(get(doc, "name", str, what), "party name"),
            VerifyKey.from_hex(get(doc, "signing_key", str, what)),
            HpkePublicKey.from_hex(get(doc, "hpke_key", str, what)),
        )

    @property
    def fingerprint(self) -> str:
        return party_fingerprint(self.signing_key, self.hpke_key)

    def sign(self, key: SigningKey) -> Envelope:
        return statements.sign(statements.REGISTRATION, self.to_dict(), key)

    @classmethod
    def verify(cls, envelope: Envelope) -> Registration:
        """A registration must be signed by the key it registers."""
        reg = cls.from_dict(
            statements.verify(envelope, statements.REGISTRATION, None, "registration")
        )
        if reg.signing_key != envelope.signer:
            raise SignatureError("registration is not signed by the key it registers")
        return reg


@dataclass(frozen=True)
class IdentityDocument:
    """What an enclave attests to: its keys, bound into REPORTDATA (DESIGN.md §3.2)."""

    backend: str
    hpke_key: HpkePublicKey
    signing_key: VerifyKey
    tls_public_key_sha256: str
    # Optional post-quantum key (ML-KEM-768+X25519) offered beside the X25519
    # ``hpke_key``: parties that chose the PQ suite wrap their data keys to it.
    hpke_pq_key: HpkePublicKey | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "version": VERSION,
            "backend": self.backend,
            "hpke_key": self.hpke_key.hex,
            "signing_key": self.signing_key.hex,
            "tls_public_key_sha256": self.tls_public_key_sha256,
        }
        if self.hpke_pq_key is not None:  # absent, not null: older documents keep their bytes
            doc["hpke_pq_key"] = self.hpke_pq_key.hex
        return doc

    def data_key_recipient(self, kem: Kem) -> HpkePublicKey:
        """The enclave key a party whose own HPKE key is of ``kem`` wraps its data keys to.

        A post-quantum party never falls back to X25519: that would undo the
        protection it chose (protocols/SPEC.md §4.3).
        """
        for key in (self.hpke_key, self.hpke_pq_key):
            if key is not None and key.kem is kem:
                return key
        raise AttestationError(
            f"the attested enclave offers no {kem.label} HPKE key, and this party wraps its "
            f"data keys only with {kem.label}: attest an enclave whose identity document has "
            "hpke_pq_key (`detente party attest`), or use a party created without --pq"
        )

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> IdentityDocument:
        what = "enclave identity document"
        _version(doc, what)
        pq = doc.get("hpke_pq_key")
        if pq is not None:
            pq = HpkePublicKey.from_hex(get(doc, "hpke_pq_key", str, what))
            if pq.kem is not Kem.MLKEM768_X25519:
                raise FormatError(f"{what} hpke_pq_key must be an ML-KEM-768+X25519 key")
        return cls(
            get(doc, "backend", str, what),
            HpkePublicKey.from_hex(get(doc, "hpke_key", str, what)),
            VerifyKey.from_hex(get(doc, "signing_key", str, what)),
            get(doc, "tls_public_key_sha256", str, what),
            hpke_pq_key=pq,
        )


@dataclass(frozen=True)
class DatasetManifest:
    """A data set's signed description (DESIGN.md §3.3)."""

    dataset_id: str
    name: str
    owner_key: VerifyKey
    schema_sha256: str
    row_count: int
    ciphertext_sha256: str
    ciphertext_size: int
    wrapped_key: bytes
    sealed_to_mrenclave: str
    sealed_to_hpke_key: HpkePublicKey
    public_schema: list[dict[str, str]] | None = None
    created_at: int = 0
    label: LabelSummary | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "version": VERSION,
            "dataset_id": self.dataset_id,
            "name": self.name,
            "owner_key": self.owner_key.hex,
            "schema_sha256": self.schema_sha256,
            "row_count": self.row_count,
            "ciphertext_sha256": self.ciphertext_sha256,
            "ciphertext_size": self.ciphertext_size,
            "wrapped_key": canonical.b64(self.wrapped_key),
            "sealed_to": {
                "mrenclave": self.sealed_to_mrenclave,
                "hpke_key": self.sealed_to_hpke_key.hex,
            },
            "created_at": self.created_at,
        }
        if self.public_schema is not None:
            doc["public_schema"] = self.public_schema
        if self.label is not None:
            doc["label"] = self.label.to_dict()
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> DatasetManifest:
        what = "dataset manifest"
        _version(doc, what)
        sealed = get(doc, "sealed_to", dict, what)
        schema = doc.get("public_schema")
        if schema is not None and not (
            isinstance(schema, list)
            and all(
                isinstance(c, dict)
                and isinstance(c.get("name"), str)
                and isinstance(c.get("type"), str)
                for c in schema
            )
        ):
            raise FormatError("dataset manifest public_schema must be a list of {name, type}")
        return cls(
            dataset_id=check_id(get(doc, "dataset_id", str, what), "dataset id"),
            name=get(doc, "name", str, what),
            owner_key=VerifyKey.from_hex(get(doc, "owner_key", str, what)),
            schema_sha256=get(doc, "schema_sha256", str, what),
            row_count=get(doc, "row_count", int, what),
            ciphertext_sha256=get(doc, "ciphertext_sha256", str, what),
            ciphertext_size=get(doc, "ciphertext_size", int, what),
            wrapped_key=canonical.unb64(get(doc, "wrapped_key", str, what), "wrapped key"),
            sealed_to_mrenclave=get(sealed, "mrenclave", str, what),
            sealed_to_hpke_key=HpkePublicKey.from_hex(get(sealed, "hpke_key", str, what)),
            public_schema=schema,
            created_at=get(doc, "created_at", int, what),
            label=LabelSummary.from_dict(doc["label"]) if doc.get("label") is not None else None,
        )

    def sign(self, key: SigningKey) -> Envelope:
        return statements.sign(statements.DATASET_MANIFEST, self.to_dict(), key)

    @classmethod
    def verify(cls, envelope: Envelope) -> DatasetManifest:
        """A manifest must be signed by the owner key it names."""
        doc = statements.verify(envelope, statements.DATASET_MANIFEST, None, "dataset manifest")
        manifest = cls.from_dict(doc)
        if manifest.owner_key != envelope.signer:
            raise SignatureError(
                f"dataset manifest {manifest.dataset_id!r} is not signed by its owner key "
                f"{manifest.owner_key.hex[:16]}… (signed by {envelope.signer.hex[:16]}…)"
            )
        return manifest


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


JOINS = ("horizontal",)
OUTPUTS = ("model", "metrics")
# Who the terms release to: exactly the data owners, or the recipients they name.
RELEASE_TO_OWNERS = "owners"
RELEASE_TO_NAMED = "named"
RELEASE_TO = (RELEASE_TO_OWNERS, RELEASE_TO_NAMED)
MAX_ROUNDS = 100_000


@dataclass(frozen=True)
class JobTerms:
    """What every data owner approves, byte for byte (DESIGN.md §3.4)."""

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "job_id": self.job_id,
            "datasets": [{"dataset_id": d, "manifest_digest": m} for d, m in self.datasets],
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
            },
            "expires_at": self.expires_at,
            "max_seconds": self.max_seconds,
            "proposer": self.proposer,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> JobTerms:
        what = "job terms"
        _version(doc, what)
        datasets = []
        for entry in get(doc, "datasets", list, what):
            if not isinstance(entry, dict):
                raise FormatError("job terms datasets must be objects")
            datasets.append(
                (
                    check_id(get(entry, "dataset_id", str, what), "dataset id"),
                    get(entry, "manifest_digest", str, what),
                )
            )
        if not datasets:
            raise FormatError("job terms name no data set")
        join = get(doc, "join", str, what)
        if join not in JOINS:
            raise FormatError(f"job terms join {join!r} is not one of {', '.join(JOINS)}")
        release = get(doc, "release", dict, what)
        outputs = get(release, "outputs", list, what)
        for output in outputs:
            if output not in OUTPUTS:
                raise FormatError(f"job terms output {output!r} is not one of {', '.join(OUTPUTS)}")
        recipients = [Recipient.from_dict(r) for r in get(release, "recipients", list, what)]
        if not recipients:
            raise FormatError("job terms name no recipient")
        id_column = doc.get("id_column")
        if id_column is not None and not isinstance(id_column, str):
            raise FormatError("job terms id_column must be a string or null")
        rounds = get(doc, "num_rounds", int, what)
        if not 1 <= rounds <= MAX_ROUNDS:
            raise FormatError(f"job terms num_rounds must be 1–{MAX_ROUNDS}, got {rounds}")
        release_to = release.get("to", RELEASE_TO_NAMED)
        if release_to not in RELEASE_TO:
            raise FormatError(
                f"job terms release.to {release_to!r} is not one of {', '.join(RELEASE_TO)}"
            )
        keys = [r.signing_key for r in recipients]
        if len(set(keys)) != len(keys) or len({r.name for r in recipients}) != len(keys):
            raise FormatError("job terms name a recipient (name or key) twice")
        max_seconds = doc.get("max_seconds")
        if max_seconds is not None and (
            isinstance(max_seconds, bool) or not isinstance(max_seconds, int) or max_seconds < 1
        ):
            raise FormatError("job terms max_seconds must be a positive integer or null")
        return cls(
            job_id=check_id(get(doc, "job_id", str, what), "job id"),
            datasets=datasets,
            join=join,
            objective=get(doc, "objective", str, what),
            label=get(doc, "label", str, what),
            params=get(doc, "params", dict, what),
            num_rounds=rounds,
            seed=get(doc, "seed", int, what),
            allowed_mrenclaves=[str(m) for m in get(doc, "allowed_mrenclaves", list, what)],
            outputs=[str(o) for o in outputs],
            recipients=recipients,
            expires_at=get(doc, "expires_at", int, what),
            id_column=id_column,
            proposer=str(doc.get("proposer", "")),
            release_to=release_to,
            max_seconds=max_seconds,
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
        _version(doc, what)
        return cls(
            check_id(get(doc, "job_id", str, what), "job id"), get(doc, "terms_digest", str, what)
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


@dataclass(frozen=True)
class OutputRecord:
    name: str
    ciphertext_sha256: str
    wrapped_keys: dict[str, bytes]  # recipient signing key hex → HPKE-wrapped content key

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ciphertext_sha256": self.ciphertext_sha256,
            "wrapped_keys": {k: canonical.b64(v) for k, v in sorted(self.wrapped_keys.items())},
        }

    @classmethod
    def from_dict(cls, doc: Any) -> OutputRecord:
        if not isinstance(doc, dict):
            raise FormatError("result output must be an object")
        what = "result output"
        keys = get(doc, "wrapped_keys", dict, what)
        return cls(
            get(doc, "name", str, what),
            get(doc, "ciphertext_sha256", str, what),
            {str(k): canonical.unb64(v, "wrapped key") for k, v in keys.items()},
        )


@dataclass(frozen=True)
class ResultStatement:
    """The enclave's signed account of what it released (DESIGN.md §3.6)."""

    job_id: str
    terms_digest: str
    mrenclave: str
    outputs: list[OutputRecord]
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "job_id": self.job_id,
            "terms_digest": self.terms_digest,
            "mrenclave": self.mrenclave,
            "outputs": [o.to_dict() for o in self.outputs],
            "summary": self.summary,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ResultStatement:
        what = "result statement"
        _version(doc, what)
        return cls(
            check_id(get(doc, "job_id", str, what), "job id"),
            get(doc, "terms_digest", str, what),
            get(doc, "mrenclave", str, what),
            [OutputRecord.from_dict(o) for o in get(doc, "outputs", list, what)],
            get(doc, "summary", dict, what),
        )

    def sign(self, key: SigningKey) -> Envelope:
        return statements.sign(statements.RESULT, self.to_dict(), key)

    @classmethod
    def verify(cls, envelope: Envelope, enclave_key: VerifyKey) -> ResultStatement:
        """Verify under the attested enclave key (from the party's attestation record)."""
        if envelope.signer != enclave_key:
            raise SignatureError(
                f"result statement is signed by key {envelope.signer.hex[:16]}…, which is not "
                f"the attested enclave key {enclave_key.hex[:16]}…: refuse it, and re-run "
                "`detente party attest` if the enclave was legitimately replaced"
            )
        doc = statements.verify(envelope, statements.RESULT, enclave_key, "result statement")
        return cls.from_dict(doc)


def schema_columns(schema: Any) -> list[dict[str, str]]:
    """The description of an Arrow schema that manifests hash and publish: its columns as
    ``{"name", "type"}`` (Arrow's type names), in order. One rule for party and enclave."""
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def schema_sha256(columns: list[dict[str, str]]) -> str:
    """Digest of a table schema given as [{"name", "type"}] (Arrow type names), in order."""
    return canonical.sha256_hex(canonical.dumps(columns))
