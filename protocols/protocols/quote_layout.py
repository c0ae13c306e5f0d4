"""The Intel ECDSA quote layout: the shared 48-byte header and the SGX v3 quote, as field tables.

The SGX layout follows Intel's "SGX ECDSA Quote Library API", Appendix A
(quote format v3): a 48-byte header, a 384-byte ISV enclave report body, then
the signature data. TDX quotes (v4, v5) share the header and the QE parts and
are parsed in protocols.tdx; :func:`parse_quote` picks the parser by version.
Simulated quotes (libos ``sim`` backend) use the SGX v3 layout, so one parser
serves simulation and hardware. Verification lives in protocols.quote_verify.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocols.errors import FormatError
from protocols.layout import Field, Layout

if TYPE_CHECKING:
    from protocols.tdx import TdxQuote


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


def qe_report_data_for(attestation_key: bytes, qe_auth_data: bytes) -> bytes:
    """The QE report data that binds an attestation key: SHA-256(key ‖ QE auth data) ‖ 32 zeros."""
    return hashlib.sha256(attestation_key + qe_auth_data).digest() + bytes(32)
