"""Signed statements: a DSSE-style envelope with Ed25519 signatures.

DSSE (github.com/secure-systems-lab/dsse, protocol.md): the signature covers
the pre-authentication encoding

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

so a verifier checks the exact payload bytes and their declared type before it
parses anything. Every Detente statement — identity document, data set
manifest, job terms, approval, result statement — travels in one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocols import canonical
from protocols.errors import FormatError, SignatureError
from protocols.keys import SigningKey, VerifyKey

TYPE_PREFIX = "application/vnd.detente."
IDENTITY = TYPE_PREFIX + "identity.v1+json"
DATASET_MANIFEST = TYPE_PREFIX + "dataset-manifest.v1+json"
JOB_TERMS = TYPE_PREFIX + "job-terms.v1+json"
APPROVAL = TYPE_PREFIX + "approval.v1+json"
RESULT = TYPE_PREFIX + "result.v1+json"
REGISTRATION = TYPE_PREFIX + "registration.v1+json"
PREDICTION_QUERY = TYPE_PREFIX + "prediction-query.v1+json"
PREDICTION_ANSWER = TYPE_PREFIX + "prediction-answer.v1+json"
MODEL_RETIREMENT = TYPE_PREFIX + "model-retirement.v1+json"
DATASET_WITHDRAWAL = TYPE_PREFIX + "dataset-withdrawal.v1+json"
REJECTION = TYPE_PREFIX + "rejection.v1+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signer: VerifyKey
    signature: bytes

    def to_bytes(self) -> bytes:
        return canonical.dumps(
            {
                "payloadType": self.payload_type,
                "payload": canonical.b64(self.payload),
                "signatures": [{"keyid": self.signer.hex, "sig": canonical.b64(self.signature)}],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "signed statement") -> Envelope:
        doc = canonical.loads(data, what)
        payload_type = canonical.field(doc, "payloadType", str, what)
        payload = canonical.unb64(canonical.field(doc, "payload", str, what), f"{what} payload")
        signatures = canonical.field(doc, "signatures", list, what)
        if len(signatures) != 1 or not isinstance(signatures[0], dict):
            raise FormatError(f"{what} must carry exactly one signature")
        keyid = canonical.field(signatures[0], "keyid", str, what)
        sig = canonical.unb64(canonical.field(signatures[0], "sig", str, what), f"{what} sig")
        return cls(payload_type, payload, VerifyKey.from_hex(keyid), sig)

    @property
    def digest(self) -> str:
        """SHA-256 of the payload bytes: what approvals and manifests refer to."""
        return canonical.sha256_hex(self.payload)


def sign(payload_type: str, document: dict[str, Any], key: SigningKey) -> Envelope:
    payload = canonical.dumps(document)
    return Envelope(payload_type, payload, key.verify_key, key.sign(pae(payload_type, payload)))


def verify(
    envelope: Envelope, payload_type: str, key: VerifyKey | None, what: str
) -> dict[str, Any]:
    """Check type and signature, then parse the payload.

    With ``key=None`` the envelope must verify under the key it names; callers
    then compare that key against the one the payload or their records require.
    """
    if envelope.payload_type != payload_type:
        raise FormatError(f"{what} has type {envelope.payload_type!r}, expected {payload_type!r}")
    signer = key if key is not None else envelope.signer
    if envelope.signer != signer:
        raise SignatureError(
            f"{what} is signed by key {envelope.signer.hex[:16]}…, expected {signer.hex[:16]}…"
        )
    try:
        signer.verify(envelope.signature, pae(envelope.payload_type, envelope.payload))
    except SignatureError:
        raise SignatureError(f"{what}: signature does not verify (altered or forged)") from None
    document = canonical.loads(envelope.payload, what)
    return document
