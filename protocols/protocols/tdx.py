"""Intel TDX ECDSA quotes, versions 4 and 5: layout and parsing.

Layouts follow Intel's "TDX DCAP Quote Generation Library and Quote Verification
Library" reference (quote format v4, Appendix A; v5 adds a body descriptor):

    v4:  header (48) ‖ TD report 1.0 body (584)                       ‖ u32 L ‖ signature data (L)
    v5:  header (48) ‖ body type (u16) ‖ body size (u32) ‖ TD report body ‖ u32 L ‖ signature data

The 48-byte header is the SGX quote header (protocols.quote_layout.HEADER) with
TEE type 0x81; in TDX quotes its QE SVN and PCE SVN words are reserved (zero).
The signature data holds the ECDSA signature of everything before L, the
attestation key, then certification data of type 6 ("QE report certification
data") which nests the QE report, its PCK signature, the QE auth data and,
again as certification data, type 5: the PEM PCK certificate chain.

Real TDX quote buffers are padded with zero bytes after the signature data
(the dcap-qvl sample carries 70). No signature covers that padding, so the
parser accepts it only when every padding byte is zero, and keeps its length
so ``to_bytes`` gives back the exact input.

Verification lives in protocols.quote_verify.verify_quote, shared with SGX quotes.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.errors import FormatError
from protocols.layout import Field, Layout
from protocols.quote_layout import (
    ATTRIBUTE_DEBUG_TD,
    CERT_DATA_PCK_CHAIN,
    CERT_DATA_QE_REPORT,
    HEADER,
    MAX_QUOTE_SIZE,
    REPORT_BODY,
    TEE_TYPE_TDX,
    ReportBody,
    pack_header,
)

QUOTE_VERSION_4 = 4
QUOTE_VERSION_5 = 5

# v5 body types (TDX DCAP quote v5, "Quote Body Descriptor").
BODY_TYPE_SGX = 1
BODY_TYPE_TD_REPORT_10 = 2
BODY_TYPE_TD_REPORT_15 = 3

TD_REPORT_10 = Layout(
    "TD report body 1.0",
    [
        Field("tee_tcb_svn", 16),
        Field("mr_seam", 48),
        Field("mr_signer_seam", 48),
        Field("seam_attributes", 8),
        Field("td_attributes", 8),
        Field("xfam", 8),
        Field("mr_td", 48),
        Field("mr_config_id", 48),
        Field("mr_owner", 48),
        Field("mr_owner_config", 48),
        Field("rtmr0", 48),
        Field("rtmr1", 48),
        Field("rtmr2", 48),
        Field("rtmr3", 48),
        Field("report_data", 64),
    ],
)

# TD report 1.5 (TDX module 1.5): the 1.0 fields, then two more.
TD_REPORT_15 = Layout(
    "TD report body 1.5",
    [
        *TD_REPORT_10.fields,
        Field("tee_tcb_svn2", 16),
        Field("mr_service_td", 48),
    ],
)

# v5 only: which body follows, and its size.
BODY_DESCRIPTOR = Layout(
    "quote v5 body descriptor",
    [Field("body_type", 2, "uint"), Field("body_size", 4, "uint")],
)

# Signature data, fixed part (after its u32 length).
TDX_SIGNATURE_FIXED = Layout(
    "TDX quote signature data",
    [Field("isv_signature", 64), Field("attestation_key", 64)],
)

# Every certification data item starts with its type and size.
CERT_DATA_HEADER = Layout(
    "certification data header",
    [Field("type", 2, "uint"), Field("size", 4, "uint")],
)

# Certification data type 6, fixed part; then u16 auth size, auth data, and
# nested certification data (type 5).
QE_REPORT_CERT_FIXED = Layout(
    "QE report certification data",
    [Field("qe_report", REPORT_BODY.size), Field("qe_report_signature", 64)],
)


@dataclass(frozen=True)
class TdReport:
    """A TD report body (1.0, or 1.5 when ``tee_tcb_svn2`` is set)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_service_td: bytes | None = None

    @property
    def debug(self) -> bool:
        # TDATTRIBUTES bit 0 is DEBUG (TDX module ABI spec, TD_PARAMS.ATTRIBUTES).
        return bool(int.from_bytes(self.td_attributes, "little") & ATTRIBUTE_DEBUG_TD)

    @property
    def layout(self) -> Layout:
        return TD_REPORT_10 if self.tee_tcb_svn2 is None else TD_REPORT_15

    def to_bytes(self) -> bytes:
        values: dict[str, bytes] = {
            "tee_tcb_svn": self.tee_tcb_svn,
            "mr_seam": self.mr_seam,
            "mr_signer_seam": self.mr_signer_seam,
            "seam_attributes": self.seam_attributes,
            "td_attributes": self.td_attributes,
            "xfam": self.xfam,
            "mr_td": self.mr_td,
            "mr_config_id": self.mr_config_id,
            "mr_owner": self.mr_owner,
            "mr_owner_config": self.mr_owner_config,
            "rtmr0": self.rtmr[0],
            "rtmr1": self.rtmr[1],
            "rtmr2": self.rtmr[2],
            "rtmr3": self.rtmr[3],
            "report_data": self.report_data,
        }
        if self.tee_tcb_svn2 is not None:
            values["tee_tcb_svn2"] = self.tee_tcb_svn2
            values["mr_service_td"] = self.mr_service_td or b""
        return self.layout.pack(values)

    @classmethod
    def from_bytes(cls, data: bytes) -> TdReport:
        """Parse a 584-byte (1.0) or 648-byte (1.5) TD report body."""
        if len(data) == TD_REPORT_15.size:
            v = TD_REPORT_15.unpack(data)
        else:
            v = TD_REPORT_10.unpack(data)
        return cls(
            tee_tcb_svn=v["tee_tcb_svn"],
            mr_seam=v["mr_seam"],
            mr_signer_seam=v["mr_signer_seam"],
            seam_attributes=v["seam_attributes"],
            td_attributes=v["td_attributes"],
            xfam=v["xfam"],
            mr_td=v["mr_td"],
            mr_config_id=v["mr_config_id"],
            mr_owner=v["mr_owner"],
            mr_owner_config=v["mr_owner_config"],
            rtmr=(v["rtmr0"], v["rtmr1"], v["rtmr2"], v["rtmr3"]),
            report_data=v["report_data"],
            tee_tcb_svn2=v.get("tee_tcb_svn2"),
            mr_service_td=v.get("mr_service_td"),
        )


@dataclass(frozen=True)
class TdxQuote:
    """A parsed TDX quote (v4 or v5).

    Field names of the QE parts match protocols.quote_layout.Quote.
    """

    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes
    body_type: int  # v4: always BODY_TYPE_TD_REPORT_10 (implicit in the format)
    td_report: TdReport
    isv_signature: bytes
    attestation_key: bytes
    outer_cert_data_type: int  # CERT_DATA_QE_REPORT
    qe_report: ReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    cert_data_type: int  # nested certification data: CERT_DATA_PCK_CHAIN
    cert_data: bytes
    padding: int = 0  # zero bytes after the signature data

    @property
    def tee(self) -> str:
        return "TDX"

    @property
    def report_data(self) -> bytes:
        return self.td_report.report_data

    @property
    def debug(self) -> bool:
        return self.td_report.debug

    def header_bytes(self) -> bytes:
        return pack_header(self)

    def signed_bytes(self) -> bytes:
        """Everything before the signature data length: what the attestation key signs."""
        body = self.td_report.to_bytes()
        if self.version == QUOTE_VERSION_4:
            return self.header_bytes() + body
        descriptor = BODY_DESCRIPTOR.pack({"body_type": self.body_type, "body_size": len(body)})
        return self.header_bytes() + descriptor + body

    def to_bytes(self) -> bytes:
        inner = (
            QE_REPORT_CERT_FIXED.pack(
                {
                    "qe_report": self.qe_report.to_bytes(),
                    "qe_report_signature": self.qe_report_signature,
                }
            )
            + len(self.qe_auth_data).to_bytes(2, "little")
            + self.qe_auth_data
            + CERT_DATA_HEADER.pack({"type": self.cert_data_type, "size": len(self.cert_data)})
            + self.cert_data
        )
        signature = (
            TDX_SIGNATURE_FIXED.pack(
                {"isv_signature": self.isv_signature, "attestation_key": self.attestation_key}
            )
            + CERT_DATA_HEADER.pack({"type": self.outer_cert_data_type, "size": len(inner)})
            + inner
        )
        return (
            self.signed_bytes()
            + len(signature).to_bytes(4, "little")
            + signature
            + bytes(self.padding)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> TdxQuote:
        """Parse a TDX v4/v5 quote; raise FormatError on any malformed length or byte."""
        data = bytes(data)
        if len(data) > MAX_QUOTE_SIZE:
            raise FormatError(f"quote is {len(data)} bytes, more than {MAX_QUOTE_SIZE}")
        if len(data) < HEADER.size:
            raise FormatError(f"quote is too short ({len(data)} bytes)")
        header = HEADER.unpack(data[: HEADER.size])
        version = header["version"]
        if version not in (QUOTE_VERSION_4, QUOTE_VERSION_5):
            raise FormatError(f"unsupported TDX quote version {version} (expected 4 or 5)")
        if header["tee_type"] != TEE_TYPE_TDX:
            raise FormatError(
                f"quote version {version} with TEE type {header['tee_type']:#x} is not supported: "
                "only TDX (0x81) quotes use versions 4 and 5 here; SGX quotes must be version 3"
            )
        pos = HEADER.size
        if version == QUOTE_VERSION_4:
            body_type, body_size = BODY_TYPE_TD_REPORT_10, TD_REPORT_10.size
        else:
            descriptor = BODY_DESCRIPTOR.unpack(_take(data, pos, BODY_DESCRIPTOR.size, "body"))
            pos += BODY_DESCRIPTOR.size
            body_type, body_size = descriptor["body_type"], descriptor["body_size"]
            expected = {
                BODY_TYPE_TD_REPORT_10: TD_REPORT_10.size,
                BODY_TYPE_TD_REPORT_15: TD_REPORT_15.size,
            }.get(body_type)
            if expected is None:
                raise FormatError(
                    f"quote v5 body type {body_type} is not supported (2 = TD report 1.0, "
                    "3 = TD report 1.5)"
                )
            if body_size != expected:
                raise FormatError(
                    f"quote v5 body type {body_type} must be {expected} bytes, "
                    f"the descriptor says {body_size}"
                )
        td_report = TdReport.from_bytes(_take(data, pos, body_size, "TD report body"))
        pos += body_size
        sig_len = int.from_bytes(_take(data, pos, 4, "signature data length"), "little")
        pos += 4
        sig = _take(data, pos, sig_len, "signature data")
        rest = data[pos + sig_len :]
        if rest.count(0) != len(rest):
            raise FormatError(
                f"quote has {len(rest)} bytes after its signature data that are not zero "
                "padding (no signature covers them)"
            )
        fixed = TDX_SIGNATURE_FIXED.unpack(_take(sig, 0, TDX_SIGNATURE_FIXED.size, "signature"))
        p = TDX_SIGNATURE_FIXED.size
        outer = CERT_DATA_HEADER.unpack(_take(sig, p, CERT_DATA_HEADER.size, "cert data header"))
        p += CERT_DATA_HEADER.size
        if outer["type"] != CERT_DATA_QE_REPORT:
            raise FormatError(
                f"TDX quote certification data type {outer['type']} is not supported "
                f"(type {CERT_DATA_QE_REPORT}, QE report certification data, is required)"
            )
        if p + outer["size"] != len(sig):
            raise FormatError(
                "TDX quote certification data length does not match the signature data length"
            )
        inner = sig[p:]
        qe = QE_REPORT_CERT_FIXED.unpack(_take(inner, 0, QE_REPORT_CERT_FIXED.size, "QE report"))
        q = QE_REPORT_CERT_FIXED.size
        auth_len = int.from_bytes(_take(inner, q, 2, "QE auth data length"), "little")
        q += 2
        auth = _take(inner, q, auth_len, "QE auth data")
        q += auth_len
        nested = CERT_DATA_HEADER.unpack(
            _take(inner, q, CERT_DATA_HEADER.size, "nested certification data header")
        )
        q += CERT_DATA_HEADER.size
        if q + nested["size"] != len(inner):
            raise FormatError(
                "TDX quote nested certification data length does not match the QE report "
                "certification data length"
            )
        return cls(
            version=version,
            attestation_key_type=header["attestation_key_type"],
            tee_type=header["tee_type"],
            qe_svn=header["qe_svn"],
            pce_svn=header["pce_svn"],
            qe_vendor_id=header["qe_vendor_id"],
            user_data=header["user_data"],
            body_type=body_type,
            td_report=td_report,
            isv_signature=fixed["isv_signature"],
            attestation_key=fixed["attestation_key"],
            outer_cert_data_type=outer["type"],
            qe_report=ReportBody.from_bytes(qe["qe_report"]),
            qe_report_signature=qe["qe_report_signature"],
            qe_auth_data=auth,
            cert_data_type=nested["type"],
            cert_data=inner[q:],
            padding=len(rest),
        )


def _take(data: bytes, pos: int, size: int, what: str) -> bytes:
    """``size`` bytes at ``pos``, or FormatError naming the part that runs past the end."""
    if pos + size > len(data):
        raise FormatError(f"TDX quote {what} runs past the end of the quote")
    return data[pos : pos + size]


__all__ = [
    "BODY_TYPE_SGX",
    "BODY_TYPE_TD_REPORT_10",
    "BODY_TYPE_TD_REPORT_15",
    "CERT_DATA_PCK_CHAIN",
    "TD_REPORT_10",
    "TD_REPORT_15",
    "TdReport",
    "TdxQuote",
]
