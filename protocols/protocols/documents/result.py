"""The enclave's signed result statement and its output records.

Format: protocols/SPEC.md §3.6.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocols import canonical, statements
from protocols.canonical import digest_field
from protocols.canonical import field as get
from protocols.documents.common import VERSION, check_id, check_version
from protocols.errors import FormatError, SignatureError
from protocols.keys import SigningKey, VerifyKey
from protocols.statements import Envelope


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
            digest_field(doc, "ciphertext_sha256", what),
            {str(k): canonical.unb64(v, "wrapped key") for k, v in keys.items()},
        )


@dataclass(frozen=True)
class ResultStatement:
    """The enclave's signed account of what it released (docs/protocol.md §6)."""

    job_id: str
    terms_digest: str
    mrenclave: str
    outputs: list[OutputRecord]
    summary: dict[str, Any]
    # The id of the model the enclave keeps, when the terms seal it (docs/protocol.md §7).
    sealed_model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "version": VERSION,
            "job_id": self.job_id,
            "terms_digest": self.terms_digest,
            "mrenclave": self.mrenclave,
            "outputs": [o.to_dict() for o in self.outputs],
            "summary": self.summary,
        }
        if self.sealed_model is not None:
            doc["sealed_model"] = self.sealed_model
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ResultStatement:
        what = "result statement"
        check_version(doc, what)
        return cls(
            check_id(get(doc, "job_id", str, what), "job id"),
            digest_field(doc, "terms_digest", what),
            digest_field(doc, "mrenclave", what),
            [OutputRecord.from_dict(o) for o in get(doc, "outputs", list, what)],
            get(doc, "summary", dict, what),
            sealed_model=(
                None
                if doc.get("sealed_model") is None
                else check_id(get(doc, "sealed_model", str, what), "sealed model id")
            ),
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
