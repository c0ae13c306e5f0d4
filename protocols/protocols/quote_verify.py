"""Verifying Intel ECDSA quotes (SGX v3, TDX v4/v5) to a pinned root, and describing them.

``verify_quote`` checks the quote's own cryptography: the PCK certificate
chain to a pinned root, the QE report signature by the PCK key, the QE report
binding of the attestation key, and the ISV (or TD) report signature. Given
collateral, it also checks the TCB info, QE identity and CRLs with dcap-qvl
(protocols.collateral) and reports the platform's TCB status. Simulated and
hardware quotes verify alike; what differs is the root their certificate
chain ends in (for hardware, the pinned Intel SGX Root CA: :func:`intel_sgx_root`).
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from protocols.collateral import Collateral, TcbStatus, pem_chain, verify_collateral
from protocols.errors import AttestationError, DetenteError, FormatError
from protocols.pck import pck_extension
from protocols.quote_layout import (
    ATTESTATION_KEY_ECDSA_P256,
    CERT_DATA_CHAIN_ELSEWHERE,
    CERT_DATA_PCK_CHAIN,
    TEE_TYPE_SGX,
    Quote,
    ReportBody,
    parse_quote,
    qe_report_data_for,
)

if TYPE_CHECKING:
    from protocols.tdx import TdReport, TdxQuote


def raw_signature_to_der(raw: bytes) -> bytes:
    """SGX stores ECDSA signatures as r ‖ s (32 bytes each, big-endian)."""
    if len(raw) != 64:
        raise FormatError("an ECDSA P-256 signature is 64 bytes (r ‖ s)")
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def raw_p256_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    """SGX stores P-256 public keys as x ‖ y."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        raise AttestationError("quote attestation key is not a valid P-256 point") from None


@functools.cache
def intel_sgx_root() -> x509.Certificate:
    """The pinned production Intel SGX Root CA (SHA-256 of DER 44a0196b…74d3).

    Read once: certificates are immutable, and every verification needs it.
    """
    der = importlib.resources.files("protocols").joinpath("intel_sgx_root_ca.der").read_bytes()
    return x509.load_der_x509_certificate(der)


def certificate_fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


_VERIFIER_TOKEN = object()


@dataclass(frozen=True)
class VerifiedQuote:
    """A quote whose signatures and chain verified. Only :func:`verify_quote` makes one.

    ``tcb`` is the TCB status the collateral gives, or None when no collateral
    was checked.
    """

    quote: Quote | TdxQuote
    root_fingerprint: str
    chain: list[x509.Certificate] = field(repr=False)
    tcb: TcbStatus | None = None
    _token: object = field(repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self._token is not _VERIFIER_TOKEN:
            raise TypeError("VerifiedQuote is made only by protocols.quote_verify.verify_quote")

    @property
    def tee(self) -> str:
        return self.quote.tee

    @property
    def report(self) -> ReportBody:
        """The SGX enclave report (SGX quotes only)."""
        if isinstance(self.quote, Quote):
            return self.quote.report
        raise AttestationError("a TDX quote has no SGX enclave report: read td_report")

    @property
    def td_report(self) -> TdReport:
        """The TD report (TDX quotes only)."""
        if isinstance(self.quote, Quote):
            raise AttestationError("an SGX quote has no TD report: read report")
        return self.quote.td_report

    @property
    def fmspc(self) -> str | None:
        ext = pck_extension(self.chain[0])
        return ext.fmspc.hex() if ext else None


def _verify_ecdsa(key: ec.EllipticCurvePublicKey, raw_sig: bytes, data: bytes, what: str) -> None:
    try:
        key.verify(raw_signature_to_der(raw_sig), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AttestationError(f"{what} does not verify") from None


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()
    except ValueError:  # parsed lazily: hostile bytes surface here
        return "(malformed subject)"


def pck_chain(
    quote: Quote | TdxQuote, collateral_chain: str | None = None
) -> list[x509.Certificate]:
    """The PCK chain: from the quote (type 5), else from the collateral if it brings one."""
    if quote.cert_data_type != CERT_DATA_PCK_CHAIN:
        if quote.cert_data_type in CERT_DATA_CHAIN_ELSEWHERE and collateral_chain is not None:
            chain = pem_chain(collateral_chain, "collateral PCK certificate chain")
            if len(chain) < 2:
                raise AttestationError(
                    "collateral PCK certificate chain must hold a leaf and its root"
                )
            return chain
        raise AttestationError(
            f"quote certification data type {quote.cert_data_type} carries no PCK chain "
            "(type 5 is required, or collateral with a pck_certificate_chain)"
        )
    pem = quote.cert_data.rstrip(b"\x00")
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except (ValueError, x509.InvalidVersion):
        raise AttestationError("quote PCK certificate chain is not valid PEM") from None
    if len(chain) < 2:
        raise AttestationError("quote PCK certificate chain must hold a leaf and its root")
    # No signature covers the PEM text around the certificates (headers, line
    # breaks, bytes between blocks): accept only the one canonical spelling
    # (RFC 7468 §2, 64-character lines) followed by NUL padding, so a quote
    # whose bytes were altered anywhere never verifies.
    canonical = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in chain)
    if pem != canonical:
        raise AttestationError(
            "quote PCK certificate chain has bytes outside its certificates or is not in "
            "canonical PEM form (no signature covers them)"
        )
    return chain


def verify_quote(
    data: bytes,
    trusted_roots: list[x509.Certificate],
    now: datetime | None = None,
    *,
    collateral: Collateral | None = None,
    pck_certificate_chain: str | None = None,
) -> VerifiedQuote:
    """Verify an SGX v3 or TDX v4/v5 quote's chain to one of ``trusted_roots`` and signatures.

    With ``collateral``, also check it at ``now`` (:func:`check_collateral`).
    ``pck_certificate_chain`` (PEM; default: the collateral's) serves quotes
    whose certification data carries no chain. Raises AttestationError
    (FormatError for bytes that do not parse) naming the first check that failed.
    """
    now = now or datetime.now(UTC)
    quote = parse_quote(data)
    if quote.attestation_key_type != ATTESTATION_KEY_ECDSA_P256:
        raise AttestationError(f"unsupported attestation key type {quote.attestation_key_type}")
    if isinstance(quote, Quote) and quote.tee_type != TEE_TYPE_SGX:
        raise AttestationError(f"quote TEE type {quote.tee_type:#x} is not SGX")
    if pck_certificate_chain is None and collateral is not None:
        pck_certificate_chain = collateral.pck_certificate_chain
    chain = pck_chain(quote, pck_certificate_chain)
    root = chain[-1]
    trusted = {certificate_fingerprint(r) for r in trusted_roots}
    if certificate_fingerprint(root) not in trusted:
        raise AttestationError(
            f"quote certificate chain ends in an untrusted root "
            f"(SHA-256 {certificate_fingerprint(root)})"
        )
    for cert, issuer in zip(chain, [*chain[1:], root], strict=True):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise AttestationError(
                f"quote certificate {_subject(cert)!r} is not validly issued "
                f"by {_subject(issuer)!r}"
            ) from None
        try:
            valid = cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
        except ValueError:  # cryptography parses some fields lazily
            raise AttestationError(f"quote certificate {_subject(cert)!r} is malformed") from None
        if not valid:
            raise AttestationError(f"quote certificate {_subject(cert)!r} is not valid at {now}")
    try:
        pck_key = chain[0].public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise AttestationError("PCK certificate public key is malformed") from None
    if not isinstance(pck_key, ec.EllipticCurvePublicKey):
        raise AttestationError("PCK certificate key is not an EC key")
    _verify_ecdsa(
        pck_key, quote.qe_report_signature, quote.qe_report.to_bytes(), "QE report signature"
    )
    if quote.qe_report.report_data != qe_report_data_for(quote.attestation_key, quote.qe_auth_data):
        raise AttestationError("QE report does not bind the quote's attestation key")
    _verify_ecdsa(
        raw_p256_key(quote.attestation_key),
        quote.isv_signature,
        quote.signed_bytes(),
        "ISV report signature" if isinstance(quote, Quote) else "TD report signature",
    )
    verified = VerifiedQuote(quote, certificate_fingerprint(root), chain, _token=_VERIFIER_TOKEN)
    if collateral is not None:
        return check_collateral(verified, collateral, now)
    return verified


def check_collateral(
    verified: VerifiedQuote, collateral: Collateral, now: datetime | None = None
) -> VerifiedQuote:
    """Check a verified quote's collateral at ``now`` with dcap-qvl; return it with its TCB.

    The collateral's chains must end in the same root as the quote's chain
    (for real quotes, the pinned Intel SGX Root CA). Raises AttestationError
    with dcap-qvl's reason, CollateralVerifierMissing if dcap-qvl is absent.
    """
    now = now or datetime.now(UTC)
    # The parser keeps every byte (reserved fields, padding), so to_bytes() is
    # the exact quote that verified.
    tcb = verify_collateral(
        verified.quote.to_bytes(), collateral, int(now.timestamp()), verified.chain[-1]
    )
    return VerifiedQuote(
        verified.quote, verified.root_fingerprint, verified.chain, tcb, _token=_VERIFIER_TOKEN
    )


def describe_quote(quote: Quote | TdxQuote) -> dict[str, Any]:
    """The fields a person checks, as JSON-ready values (hex for bytes); stable keys.

    ``fmspc`` comes from the PCK certificate in the quote (None when the
    quote carries no readable chain): it names the TCB info to fetch.
    """
    fields: dict[str, Any] = {
        "version": quote.version,
        "tee": quote.tee,
        "tee_type": quote.tee_type,
        "attestation_key_type": quote.attestation_key_type,
        "qe_svn": quote.qe_svn,
        "pce_svn": quote.pce_svn,
        "qe_vendor_id": quote.qe_vendor_id.hex(),
        "cert_data_type": quote.cert_data_type,
    }
    if isinstance(quote, Quote):
        report = quote.report
        fields.update(
            {
                "mrenclave": report.mr_enclave.hex(),
                "mrsigner": report.mr_signer.hex(),
                "isv_prod_id": report.isv_prod_id,
                "isv_svn": report.isv_svn,
                "attributes": report.attributes.hex(),
                "cpu_svn": report.cpu_svn.hex(),
                "misc_select": report.misc_select,
            }
        )
    else:
        td = quote.td_report
        fields.update(
            {
                "body_type": quote.body_type,
                "mrtd": td.mr_td.hex(),
                "rtmr": [r.hex() for r in td.rtmr],
                "mr_seam": td.mr_seam.hex(),
                "mr_signer_seam": td.mr_signer_seam.hex(),
                "mr_config_id": td.mr_config_id.hex(),
                "mr_owner": td.mr_owner.hex(),
                "mr_owner_config": td.mr_owner_config.hex(),
                "td_attributes": td.td_attributes.hex(),
                "xfam": td.xfam.hex(),
                "tee_tcb_svn": td.tee_tcb_svn.hex(),
            }
        )
        if td.tee_tcb_svn2 is not None and td.mr_service_td is not None:
            fields["tee_tcb_svn2"] = td.tee_tcb_svn2.hex()
            fields["mr_service_td"] = td.mr_service_td.hex()
    fields["debug"] = quote.debug
    fields["report_data"] = quote.report_data.hex()
    try:
        ext = pck_extension(pck_chain(quote)[0])
        fields["fmspc"] = ext.fmspc.hex() if ext else None
    except DetenteError:
        fields["fmspc"] = None
    return fields
