"""RA-TLS: an enclave's TLS certificate that carries its own attestation evidence.

As Gramine does it (``gramine/tools/sgx/ra-tls``), the enclave generates a
fresh TLS key at start, quotes with REPORTDATA bound to that key, and puts the
quote in an X.509 extension of a self-signed certificate. A client verifies
the evidence and the binding before it sends anything on the channel, so a
successful handshake proves it talks to code of an allowed measurement.

The certificate profile, the two evidence extensions and the binding (the
identity document names the SHA-256 of the TLS *key*, not of the certificate,
which avoids a circle) are specified in protocols/SPEC.md §13.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

from protocols import canonical, tls
from protocols.attestation import (
    Evidence,
    EvidenceRefused,
    Rule,
    VerifiedEnclave,
    verify_evidence,
)
from protocols.errors import AttestationError, DetenteError, FormatError
from protocols.policy import AttestationPolicy

GRAMINE_QUOTE_OID = x509.ObjectIdentifier("1.2.840.113741.1337.6")
TCG_DICE_TAGGED_EVIDENCE_OID = x509.ObjectIdentifier("2.23.133.5.4.9")
EVIDENCE_TYPE = "application/vnd.detente.ratls-evidence.v1+json"
EVIDENCE_VERSION = 1
# Certificate evidence has no verifier nonce: freshness comes from the TLS key,
# generated per process start and never leaving the enclave (SPEC §13.3).
CERTIFICATE_NONCE = bytes(32)
COMMON_NAME = "detente-enclave"
# The largest quote the parser accepts is 64 KiB; base64 and the identity fit in 256 KiB.
MAX_EVIDENCE = 256 * 1024


# --------------------------------------------------------------------------- DER OCTET STRING
# X.690 §8.7 (primitive OCTET STRING, tag 0x04) with definite lengths in the
# shortest form (§10.1, DER), enough for this one extension value.


def der_octet_string(data: bytes) -> bytes:
    size = len(data)
    if size < 0x80:
        return b"\x04" + bytes([size]) + data
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return b"\x04" + bytes([0x80 | len(length)]) + length + data


def parse_der_octet_string(data: bytes, what: str) -> bytes:
    """The contents of one DER OCTET STRING that spans all of ``data``."""
    if len(data) < 2 or data[0] != 0x04:
        raise FormatError(f"{what} is not a DER OCTET STRING")
    first = data[1]
    if first < 0x80:
        size, start = first, 2
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or len(data) < 2 + count:
            raise FormatError(f"{what} has an invalid DER length")
        size = int.from_bytes(data[2 : 2 + count], "big")
        start = 2 + count
        if size < 0x80 or data[2] == 0:
            raise FormatError(f"{what} length is not in the shortest (DER) form")
    if start + size != len(data):
        raise FormatError(f"{what} length {size} does not match its {len(data) - start} bytes")
    return data[start:]


# --------------------------------------------------------------------------- evidence encoding


def encode_evidence(evidence: Evidence) -> bytes:
    """The TCG DICE extension value: DER OCTET STRING of the canonical JSON evidence."""
    document = {
        "type": EVIDENCE_TYPE,
        "version": EVIDENCE_VERSION,
        "backend": evidence.backend,
        "identity": canonical.b64(evidence.identity),
        "quote": canonical.b64(evidence.quote),
    }
    return der_octet_string(canonical.dumps(document))


def decode_evidence(value: bytes) -> Evidence:
    """Parse the TCG DICE extension value; FormatError for anything malformed."""
    what = "RA-TLS evidence extension"
    if len(value) > MAX_EVIDENCE:
        raise FormatError(f"{what} is {len(value)} bytes, more than {MAX_EVIDENCE}")
    doc = canonical.loads(parse_der_octet_string(value, what), what)
    if canonical.field(doc, "type", str, what) != EVIDENCE_TYPE:
        raise FormatError(f"{what} has type {doc['type']!r}, expected {EVIDENCE_TYPE!r}")
    if canonical.field(doc, "version", int, what) != EVIDENCE_VERSION:
        raise FormatError(f"{what} has unsupported version {doc['version']!r}")
    return Evidence(
        identity=canonical.unb64(canonical.field(doc, "identity", str, what), f"{what} identity"),
        quote=canonical.unb64(canonical.field(doc, "quote", str, what), f"{what} quote"),
        backend=canonical.field(doc, "backend", str, what),
    )


# --------------------------------------------------------------------------- certificate


def create_certificate(
    key: ec.EllipticCurvePrivateKey,
    evidence: Evidence,
    common_name: str = COMMON_NAME,
    lifetime: timedelta = tls.DEFAULT_LIFETIME,
    now: datetime | None = None,
) -> x509.Certificate:
    """The self-signed RA-TLS certificate of ``key`` carrying ``evidence`` under both OIDs.

    The evidence must name this key (``tls_public_key_sha256``) and bind
    :data:`CERTIFICATE_NONCE`; :func:`verify_ratls_certificate` checks both.
    """
    return tls.self_signed_certificate(
        key,
        common_name,
        extensions=[
            x509.UnrecognizedExtension(GRAMINE_QUOTE_OID, evidence.quote),
            x509.UnrecognizedExtension(TCG_DICE_TAGGED_EVIDENCE_OID, encode_evidence(evidence)),
        ],
        lifetime=lifetime,
        now=now,
    )


class CertificateRefused(AttestationError):
    """An RA-TLS certificate failed a rule; ``rule`` names it, ``verdict`` lists the evidence's."""

    def __init__(self, rule: str, detail: str, verdict: Sequence[Rule] = ()) -> None:
        failed = [f"{r.name}: {r.detail}" for r in verdict if not r.passed]
        super().__init__(
            f"RA-TLS certificate refused — {'; '.join(failed or [f'{rule}: {detail}'])}"
        )
        self.rule = rule
        self.detail = detail
        self.verdict = tuple(verdict)


@dataclass(frozen=True)
class CertificateEvidence:
    """What a parsed RA-TLS certificate carries (not verified)."""

    certificate: x509.Certificate
    evidence: Evidence


def parse_ratls_certificate(cert_der: bytes, now: datetime | None = None) -> CertificateEvidence:
    """Rules ``certificate`` and ``extension``: a well-formed, self-signed, current certificate
    of a P-256 key, with Detente evidence. Raises CertificateRefused naming the rule."""
    try:
        # cryptography parses fields lazily: touch every one used below inside the try.
        cert = x509.load_der_x509_certificate(cert_der)
        public = cert.public_key()
        extensions = list(cert.extensions)  # duplicates raise ValueError
        issuer, subject = cert.issuer, cert.subject
        valid_from, valid_to = cert.not_valid_before_utc, cert.not_valid_after_utc
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        raise CertificateRefused("certificate", f"not a valid X.509 certificate: {exc}") from None
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
        public.curve, ec.SECP256R1
    ):
        raise CertificateRefused("certificate", "the certificate's key is not an ECDSA P-256 key")
    if issuer != subject:
        raise CertificateRefused("certificate", "an RA-TLS certificate must be self-signed")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise CertificateRefused(
            "certificate", "the self-signature does not verify (the certificate was altered)"
        ) from None
    at = now or datetime.now(UTC)
    if not valid_from <= at <= valid_to:
        raise CertificateRefused(
            "certificate",
            f"not valid at {at:%Y-%m-%d %H:%M:%S} UTC (valid {valid_from:%Y-%m-%d} "
            f"to {valid_to:%Y-%m-%d})",
        )
    values = {
        ext.oid: ext.value.value
        for ext in extensions
        if isinstance(ext.value, x509.UnrecognizedExtension)
    }
    tagged = values.get(TCG_DICE_TAGGED_EVIDENCE_OID)
    if tagged is None:
        detail = (
            "it carries only a bare Gramine quote (OID 1.2.840.113741.1337.6), without the "
            "identity document Detente needs"
            if GRAMINE_QUOTE_OID in values
            else "it carries no attestation evidence (no extension "
            f"{TCG_DICE_TAGGED_EVIDENCE_OID.dotted_string}): this is not an RA-TLS certificate"
        )
        raise CertificateRefused("extension", detail)
    try:
        evidence = decode_evidence(tagged)
    except FormatError as exc:
        raise CertificateRefused("extension", str(exc)) from None
    legacy = values.get(GRAMINE_QUOTE_OID)
    if legacy is not None and legacy != evidence.quote:
        raise CertificateRefused(
            "extension",
            "the Gramine quote extension and the tagged evidence carry different quotes",
        )
    return CertificateEvidence(cert, evidence)


def verify_ratls_certificate(
    cert_der: bytes, policy: AttestationPolicy, now: datetime | None = None
) -> VerifiedEnclave:
    """Verify an enclave's RA-TLS certificate under ``policy``; raise CertificateRefused.

    Rules, in order (the first failure is named in the error):
    ``certificate`` and ``extension`` (:func:`parse_ratls_certificate`); every
    rule of :func:`protocols.attestation.verify_evidence` with the nonce
    :data:`CERTIFICATE_NONCE`; ``tls-key``: the identity document names this
    certificate's public key.
    """
    parsed = parse_ratls_certificate(cert_der, now)
    try:
        enclave = verify_evidence(parsed.evidence, CERTIFICATE_NONCE, policy, now)
    except EvidenceRefused as exc:
        first = next((r for r in exc.verdict if not r.passed), None)
        raise CertificateRefused(
            first.name if first else "evidence", first.detail if first else str(exc), exc.verdict
        ) from None
    except DetenteError as exc:
        raise CertificateRefused("evidence", str(exc)) from None
    expected = enclave.identity.tls_public_key_sha256
    actual = tls.public_key_sha256(parsed.certificate)
    if expected != actual:
        raise CertificateRefused(
            "tls-key",
            f"the attested identity names TLS key {expected[:16] or '(none)'}…, but this "
            f"certificate's key is {actual[:16]}…: the evidence was taken from another "
            "certificate",
        )
    return enclave
