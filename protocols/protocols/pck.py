"""The SGX extension of PCK certificates: the FMSPC and PCE-ID a PCK leaf names, read from DER.

Intel "SGX PCK Certificate and CRL Profile" §1.3.5: extension 1.2.840.113741.1.13.1
is a SEQUENCE of SEQUENCE { OID, value }; FMSPC (…13.1.4) and PCE-ID (…13.1.3) are
OCTET STRINGs of 6 and 2 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from protocols.errors import FormatError

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
