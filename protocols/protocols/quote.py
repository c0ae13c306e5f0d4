"""Intel ECDSA quotes: the SGX v3 layout, and the one verifier for SGX and TDX quotes.

The SGX layout follows Intel's "SGX ECDSA Quote Library API", Appendix A
(quote format v3): a 48-byte header, a 384-byte ISV enclave report body, then
the signature data. TDX quotes (v4, v5) share the header and the QE parts and
are parsed in protocols.tdx. Simulated quotes (libos ``sim`` backend) use the
SGX v3 layout, so one parser and one verifier serve simulation and hardware;
what differs is the root their certificate chain ends in.

``verify_quote`` checks the quote's own cryptography: the PCK certificate
chain to a pinned root, the QE report signature by the PCK key, the QE report
binding of the attestation key, and the ISV (or TD) report signature. Given
collateral, it also checks the TCB info, QE identity and CRLs with dcap-qvl
(protocols.collateral) and reports the platform's TCB status.
"""

from __future__ import annotations

import functools
import hashlib
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
from protocols.layout import Field, Layout

if TYPE_CHECKING:
    from protocols.tdx import TdReport, TdxQuote

HEADER = Layout(
    "quote header",
    [
        Field("version", 2, "uint"),
        Field("attestation_key_type", 2, "uint"),
        Field("tee_type", 4, "uint"),
        Field("qe_svn", 2, "uint"),
        Field("pce_svn", 2, "uint"),
        Field("qe_vendor_id", 16),
        Field("user_data", 20),
    ],
)

REPORT_BODY = Layout(
    "report body",
    [
        Field("cpu_svn", 16),
        Field("misc_select", 4, "uint"),
        Field("reserved1", 28),
        Field("attributes", 16),
        Field("mr_enclave", 32),
        Field("reserved2", 32),
        Field("mr_signer", 32),
        Field("reserved3", 96),
        Field("isv_prod_id", 2, "uint"),
        Field("isv_svn", 2, "uint"),
        Field("reserved4", 60),
        Field("report_data", 64),
    ],
)

# Fixed part of the signature data (after its u32 length).
SIGNATURE_FIXED = Layout(
    "quote signature data",
    [
        Field("isv_signature", 64),
        Field("attestation_key", 64),
        Field("qe_report", REPORT_BODY.size),
        Field("qe_report_signature", 64),
    ],
)

QUOTE_VERSION = 3
ATTESTATION_KEY_ECDSA_P256 = 2
TEE_TYPE_SGX = 0
TEE_TYPE_TDX = 0x81
CERT_DATA_PCK_CHAIN = 5
CERT_DATA_QE_REPORT = 6
# Certification data types whose PCK chain is not in the quote (PPID forms,
# PCK leaf only): the chain must then come with the collateral.
CERT_DATA_CHAIN_ELSEWHERE = (1, 2, 3, 4)
ATTRIBUTE_DEBUG = 0x02  # SGX ATTRIBUTES.FLAGS bit 1 (SDM Vol. 3D, SECS)
ATTRIBUTE_DEBUG_TD = 0x01  # TDX TDATTRIBUTES bit 0
SIGNED_SIZE = HEADER.size + REPORT_BODY.size  # 432: what the attestation key signs
MAX_QUOTE_SIZE = 1 << 16
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
# The simulation backend's QE vendor id: ASCII, so a hex dump says what it is.
SIMULATION_QE_VENDOR_ID = b"DETENTE-SIM-QE\x00\x00"


def pack_header(quote: Any) -> bytes:
    """The 48-byte quote header (shared by SGX v3 and TDX v4/v5) from a quote's fields."""
    return HEADER.pack({f.name: getattr(quote, f.name) for f in HEADER.fields})


@dataclass(frozen=True)
class ReportBody:
    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes
    # Reserved fields are kept as received: the signatures cover them, so
    # rebuilding them as zeros would let altered bytes pass unnoticed.
    reserved: tuple[bytes, bytes, bytes, bytes] = (bytes(28), bytes(32), bytes(96), bytes(60))

    @property
    def debug(self) -> bool:
        return bool(int.from_bytes(self.attributes[:8], "little") & ATTRIBUTE_DEBUG)

    def to_bytes(self) -> bytes:
        return REPORT_BODY.pack(
            {
                "cpu_svn": self.cpu_svn,
                "misc_select": self.misc_select,
                "reserved1": self.reserved[0],
                "attributes": self.attributes,
                "mr_enclave": self.mr_enclave,
                "reserved2": self.reserved[1],
                "mr_signer": self.mr_signer,
                "reserved3": self.reserved[2],
                "isv_prod_id": self.isv_prod_id,
                "isv_svn": self.isv_svn,
                "reserved4": self.reserved[3],
                "report_data": self.report_data,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ReportBody:
        v = REPORT_BODY.unpack(data)
        return cls(
            v["cpu_svn"],
            v["misc_select"],
            v["attributes"],
            v["mr_enclave"],
            v["mr_signer"],
            v["isv_prod_id"],
            v["isv_svn"],
            v["report_data"],
            (v["reserved1"], v["reserved2"], v["reserved3"], v["reserved4"]),
        )


@dataclass(frozen=True)
class Quote:
    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes
    report: ReportBody
    isv_signature: bytes
    attestation_key: bytes
    qe_report: ReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    cert_data_type: int
    cert_data: bytes

    @property
    def tee(self) -> str:
        return "SGX"

    @property
    def report_data(self) -> bytes:
        return self.report.report_data

    @property
    def debug(self) -> bool:
        return self.report.debug

    def header_bytes(self) -> bytes:
        return pack_header(self)

    def signed_bytes(self) -> bytes:
        """Header ‖ report body: the bytes the attestation key signs."""
        return self.header_bytes() + self.report.to_bytes()

    def to_bytes(self) -> bytes:
        signature = (
            SIGNATURE_FIXED.pack(
                {
                    "isv_signature": self.isv_signature,
                    "attestation_key": self.attestation_key,
                    "qe_report": self.qe_report.to_bytes(),
                    "qe_report_signature": self.qe_report_signature,
                }
            )
            + len(self.qe_auth_data).to_bytes(2, "little")
            + self.qe_auth_data
            + self.cert_data_type.to_bytes(2, "little")
            + len(self.cert_data).to_bytes(4, "little")
            + self.cert_data
        )
        return self.signed_bytes() + len(signature).to_bytes(4, "little") + signature

    @classmethod
    def from_bytes(cls, data: bytes) -> Quote:
        """Parse a v3 quote; raise FormatError on any malformed or trailing byte."""
        data = bytes(data)
        if len(data) > MAX_QUOTE_SIZE:
            raise FormatError(f"quote is {len(data)} bytes, more than {MAX_QUOTE_SIZE}")
        if len(data) < SIGNED_SIZE + 4 + SIGNATURE_FIXED.size + 2:
            raise FormatError(f"quote is too short ({len(data)} bytes)")
        header = HEADER.unpack(data[: HEADER.size])
        if header["version"] != QUOTE_VERSION:
            raise FormatError(f"unsupported quote version {header['version']} (expected 3)")
        report = ReportBody.from_bytes(data[HEADER.size : SIGNED_SIZE])
        sig_len = int.from_bytes(data[SIGNED_SIZE : SIGNED_SIZE + 4], "little")
        sig = data[SIGNED_SIZE + 4 :]
        if sig_len != len(sig):
            raise FormatError(
                f"quote signature data length says {sig_len} bytes, {len(sig)} are present"
            )
        fixed = SIGNATURE_FIXED.unpack(sig[: SIGNATURE_FIXED.size])
        pos = SIGNATURE_FIXED.size
        auth_len = int.from_bytes(sig[pos : pos + 2], "little")
        pos += 2
        if pos + auth_len + 6 > len(sig):
            raise FormatError("quote QE auth data runs past the end of the quote")
        auth = sig[pos : pos + auth_len]
        pos += auth_len
        cert_type = int.from_bytes(sig[pos : pos + 2], "little")
        cert_len = int.from_bytes(sig[pos + 2 : pos + 6], "little")
        pos += 6
        if pos + cert_len != len(sig):
            raise FormatError("quote certification data length does not match the quote size")
        return cls(
            version=header["version"],
            attestation_key_type=header["attestation_key_type"],
            tee_type=header["tee_type"],
            qe_svn=header["qe_svn"],
            pce_svn=header["pce_svn"],
            qe_vendor_id=header["qe_vendor_id"],
            user_data=header["user_data"],
            report=report,
            isv_signature=fixed["isv_signature"],
            attestation_key=fixed["attestation_key"],
            qe_report=ReportBody.from_bytes(fixed["qe_report"]),
            qe_report_signature=fixed["qe_report_signature"],
            qe_auth_data=auth,
            cert_data_type=cert_type,
            cert_data=sig[pos:],
        )


def parse_quote(data: bytes) -> Quote | TdxQuote:
    """Parse an SGX v3 or TDX v4/v5 quote, chosen by its version field."""
    from protocols.tdx import TdxQuote  # tdx builds on this module's layouts

    data = bytes(data)
    if len(data) < 2:
        raise FormatError(f"quote is too short ({len(data)} bytes)")
    version = int.from_bytes(data[:2], "little")
    if version == QUOTE_VERSION:
        return Quote.from_bytes(data)
    if version in (4, 5):
        return TdxQuote.from_bytes(data)
    raise FormatError(f"unsupported quote version {version} (expected 3 for SGX, 4 or 5 for TDX)")


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


def qe_report_data_for(attestation_key: bytes, qe_auth_data: bytes) -> bytes:
    return hashlib.sha256(attestation_key + qe_auth_data).digest() + bytes(32)


@functools.cache
def intel_sgx_root() -> x509.Certificate:
    """The pinned production Intel SGX Root CA (SHA-256 of DER 44a0196b…74d3).

    Read once: certificates are immutable, and every verification needs it.
    """
    der = importlib.resources.files("protocols").joinpath("intel_sgx_root_ca.der").read_bytes()
    return x509.load_der_x509_certificate(der)


def certificate_fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


# --- the SGX extension of PCK certificates --------------------------------------------
# Intel "SGX PCK Certificate and CRL Profile" §1.3.5: extension 1.2.840.113741.1.13.1
# is a SEQUENCE of SEQUENCE { OID, value }; FMSPC (…13.1.4) and PCE-ID (…13.1.3) are
# OCTET STRINGs of 6 and 2 bytes.

SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
FMSPC_OID = "1.2.840.113741.1.13.1.4"
PCE_ID_OID = "1.2.840.113741.1.13.1.3"
_DER_SEQUENCE, _DER_OID, _DER_OCTET_STRING = 0x30, 0x06, 0x04


@dataclass(frozen=True)
class PckExtension:
    fmspc: bytes  # Family-Model-Stepping-Platform-CustomSKU: selects the TCB info
    pce_id: bytes


def pck_extension(cert: x509.Certificate) -> PckExtension | None:
    """The FMSPC and PCE-ID of a PCK certificate; None if it has no SGX extension."""
    try:
        ext = cert.extensions.get_extension_for_oid(SGX_EXTENSION_OID)
    except x509.ExtensionNotFound:
        return None
    except ValueError:
        raise FormatError("PCK certificate extensions are malformed") from None
    if not isinstance(ext.value, x509.UnrecognizedExtension):
        raise FormatError("PCK certificate SGX extension has an unexpected type")
    outer = _der_items(ext.value.value, "PCK SGX extension")
    if len(outer) != 1 or outer[0][0] != _DER_SEQUENCE:
        raise FormatError("PCK SGX extension is not one DER SEQUENCE")
    values: dict[str, tuple[int, bytes]] = {}
    for tag, content in _der_items(outer[0][1], "PCK SGX extension"):
        parts = _der_items(content, "PCK SGX extension entry")
        if tag != _DER_SEQUENCE or len(parts) != 2 or parts[0][0] != _DER_OID:
            raise FormatError("PCK SGX extension entry is not SEQUENCE { OID, value }")
        values[_decode_oid(parts[0][1])] = parts[1]

    def octets(oid: str, size: int, name: str) -> bytes:
        tag, value = values.get(oid, (0, b""))
        if tag != _DER_OCTET_STRING or len(value) != size:
            raise FormatError(f"PCK SGX extension has no {size}-byte {name} ({oid})")
        return value

    return PckExtension(octets(FMSPC_OID, 6, "FMSPC"), octets(PCE_ID_OID, 2, "PCE-ID"))


def _der_items(data: bytes, what: str) -> list[tuple[int, bytes]]:
    """Split DER content into (tag, value) items; FormatError on any length past the end."""
    items: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise FormatError(f"{what}: truncated DER item")
        tag, first = data[pos], data[pos + 1]
        pos += 2
        if tag & 0x1F == 0x1F:
            raise FormatError(f"{what}: DER high tag numbers are not used here")
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if not 1 <= count <= 4 or pos + count > len(data):
                raise FormatError(f"{what}: bad DER length")
            length = int.from_bytes(data[pos : pos + count], "big")
            pos += count
        if pos + length > len(data):
            raise FormatError(f"{what}: DER item runs past the end")
        items.append((tag, data[pos : pos + length]))
        pos += length
    return items


def _decode_oid(data: bytes) -> str:
    if not data or data[-1] & 0x80:
        raise FormatError("malformed DER object identifier")
    arcs: list[int] = []
    value = 0
    for byte in data:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


# --- verification ---------------------------------------------------------------------

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
            raise TypeError("VerifiedQuote is made only by protocols.quote.verify_quote")

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
