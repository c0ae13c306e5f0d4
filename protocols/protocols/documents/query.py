"""Queries of a sealed model, their answers, and the owners' retirement of it.

A sealed model never leaves the enclave (docs/protocol.md §7). A querier
seals its rows to the attested enclave and signs a :class:`PredictionQuery`;
the enclave answers with predictions encrypted to the querier and a signed
:class:`PredictionAnswer` that states the budget left. Every data owner of the
job signs a :class:`ModelRetirement` to have the enclave destroy the model.

Formats: protocols/SPEC.md §3.8–3.10.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocols import canonical, statements
from protocols.canonical import digest_field
from protocols.canonical import field as get
from protocols.documents.common import VERSION, check_id, check_version
from protocols.errors import FormatError, SignatureError
from protocols.keys import HpkePublicKey, SigningKey, VerifyKey
from protocols.statements import Envelope

# A query is answered only within this many seconds of when its querier issued it
# (by the enclave's clock), and its id is remembered that long: a relayed query
# cannot be replayed to spend the querier's budget.
QUERY_WINDOW_SECONDS = 600
# Rows one query may carry.
MAX_QUERY_ROWS = 1_000_000


def _count(doc: dict[str, Any], name: str, what: str, low: int = 0) -> int:
    value = get(doc, name, int, what)
    if isinstance(value, bool) or value < low:
        raise FormatError(f"{what} {name} must be an integer ≥ {low}")
    return value


@dataclass(frozen=True)
class PredictionQuery:
    """A querier's signed request: score these rows (sealed to the enclave) with that model."""

    model_id: str
    query_id: str  # random, chosen by the querier: the answer names it
    issued_at: int  # unix seconds
    rows: int
    ciphertext_sha256: str  # of the sealed rows (an Arrow IPC stream, STREAM AEAD)
    wrapped_key: bytes  # the rows' content key, HPKE-wrapped to the enclave
    sealed_to_mrenclave: str
    sealed_to_hpke_key: HpkePublicKey

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "model_id": self.model_id,
            "query_id": self.query_id,
            "issued_at": self.issued_at,
            "rows": self.rows,
            "ciphertext_sha256": self.ciphertext_sha256,
            "wrapped_key": canonical.b64(self.wrapped_key),
            "sealed_to": {
                "mrenclave": self.sealed_to_mrenclave,
                "hpke_key": self.sealed_to_hpke_key.hex,
            },
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> PredictionQuery:
        what = "prediction query"
        check_version(doc, what)
        rows = _count(doc, "rows", what, 1)
        if rows > MAX_QUERY_ROWS:
            raise FormatError(
                f"a prediction query carries at most {MAX_QUERY_ROWS:,} rows, not {rows:,}: "
                "split the file"
            )
        sealed_to = get(doc, "sealed_to", dict, what)
        return cls(
            check_id(get(doc, "model_id", str, what), "model id"),
            check_id(get(doc, "query_id", str, what), "query id"),
            _count(doc, "issued_at", what),
            rows,
            digest_field(doc, "ciphertext_sha256", what),
            canonical.unb64(get(doc, "wrapped_key", str, what), "wrapped key"),
            digest_field(sealed_to, "mrenclave", what),
            HpkePublicKey.from_hex(get(sealed_to, "hpke_key", str, what)),
        )

    def sign(self, key: SigningKey) -> Envelope:
        return statements.sign(statements.PREDICTION_QUERY, self.to_dict(), key)

    @classmethod
    def verify(cls, envelope: Envelope) -> PredictionQuery:
        """Verify under the key that signed it (the enclave then checks that key may query)."""
        doc = statements.verify(envelope, statements.PREDICTION_QUERY, None, "prediction query")
        return cls.from_dict(doc)


@dataclass(frozen=True)
class Budget:
    """Rows a querier may still score: in all, and today (None: no daily limit)."""

    total: int
    today: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"total_rows": self.total, "rows_today": self.today}

    @classmethod
    def from_dict(cls, doc: Any) -> Budget:
        if not isinstance(doc, dict):
            raise FormatError("budget must be an object")
        what = "budget"
        today = doc.get("rows_today")
        if today is not None and (isinstance(today, bool) or not isinstance(today, int)):
            raise FormatError("budget rows_today must be an integer or null")
        return cls(_count(doc, "total_rows", what), today)

    def describe(self) -> str:
        text = f"{self.total:,} rows in all"
        return text if self.today is None else f"{text}, {self.today:,} today"


@dataclass(frozen=True)
class PredictionAnswer:
    """The enclave's signed answer to one query: the predictions are encrypted to the querier."""

    model_id: str
    query_id: str
    query_digest: str  # payload digest of the query it answers
    rows: int
    columns: list[str]  # the columns of the answer table
    ciphertext_sha256: str
    wrapped_key: bytes  # HPKE-wrapped to the querier's key in the terms
    remaining: Budget

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "model_id": self.model_id,
            "query_id": self.query_id,
            "query_digest": self.query_digest,
            "rows": self.rows,
            "columns": self.columns,
            "ciphertext_sha256": self.ciphertext_sha256,
            "wrapped_key": canonical.b64(self.wrapped_key),
            "remaining": self.remaining.to_dict(),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> PredictionAnswer:
        what = "prediction answer"
        check_version(doc, what)
        columns = get(doc, "columns", list, what)
        if not columns or not all(isinstance(c, str) for c in columns):
            raise FormatError("prediction answer columns must be a non-empty list of names")
        return cls(
            check_id(get(doc, "model_id", str, what), "model id"),
            check_id(get(doc, "query_id", str, what), "query id"),
            digest_field(doc, "query_digest", what),
            _count(doc, "rows", what, 1),
            [str(c) for c in columns],
            digest_field(doc, "ciphertext_sha256", what),
            canonical.unb64(get(doc, "wrapped_key", str, what), "wrapped key"),
            Budget.from_dict(get(doc, "remaining", dict, what)),
        )

    def sign(self, key: SigningKey) -> Envelope:
        return statements.sign(statements.PREDICTION_ANSWER, self.to_dict(), key)

    @classmethod
    def verify(cls, envelope: Envelope, enclave_key: VerifyKey) -> PredictionAnswer:
        """Verify under the attested enclave key."""
        if envelope.signer != enclave_key:
            raise SignatureError(
                f"prediction answer is signed by key {envelope.signer.hex[:16]}…, which is not "
                f"the attested enclave key {enclave_key.hex[:16]}…: refuse it, and re-run "
                "`detente party attest` if the enclave was legitimately replaced"
            )
        doc = statements.verify(
            envelope, statements.PREDICTION_ANSWER, enclave_key, "prediction answer"
        )
        return cls.from_dict(doc)


@dataclass(frozen=True)
class ModelRetirement:
    """One data owner's signature asking the enclave to destroy a sealed model."""

    model_id: str
    terms_digest: str  # the terms of the job that sealed it

    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "model_id": self.model_id, "terms_digest": self.terms_digest}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ModelRetirement:
        what = "model retirement"
        check_version(doc, what)
        return cls(
            check_id(get(doc, "model_id", str, what), "model id"),
            digest_field(doc, "terms_digest", what),
        )

    def sign(self, key: SigningKey) -> Envelope:
        return statements.sign(statements.MODEL_RETIREMENT, self.to_dict(), key)

    @classmethod
    def verify(cls, envelope: Envelope) -> ModelRetirement:
        doc = statements.verify(envelope, statements.MODEL_RETIREMENT, None, "model retirement")
        return cls.from_dict(doc)
