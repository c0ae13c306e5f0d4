"""TDX quotes v4 and v5 (protocols/tdx.py) against the real quotes in tests/vectors/sgx-dcap/."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import pck, quote_layout, quote_verify, tdx
from protocols.errors import AttestationError, DetenteError, FormatError

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "sgx-dcap"
TDX_V4 = (VECTORS / "tdx_quote").read_bytes()
TDX_V5 = (VECTORS / "tdx_quote_outdated").read_bytes()
SGX_QUOTE = (VECTORS / "sgx_quote").read_bytes()
NOW = datetime(2025, 7, 1, tzinfo=UTC)
NOW_V5 = datetime(2026, 3, 1, tzinfo=UTC)
TD_FIELDS = [
    "tee_tcb_svn",
    "mr_seam",
    "mr_signer_seam",
    "seam_attributes",
    "td_attributes",
    "xfam",
    "mr_td",
    "mr_config_id",
    "mr_owner",
    "mr_owner_config",
    "report_data",
]
SIG_V4 = 48 + 584  # offset of the signature data length in a v4 quote
SIG_V5 = 48 + 6 + 648


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


# --- layout ------------------------------------------------------------------------


def test_layout_sizes_and_offsets() -> None:
    """TDX DCAP quote v4 Appendix A: TD report 1.0 is 584 bytes, 1.5 adds 64."""
    assert tdx.TD_REPORT_10.size == 584
    assert tdx.TD_REPORT_15.size == 648
    offsets = tdx.TD_REPORT_10.offsets
    assert (offsets["mr_td"], offsets["rtmr0"], offsets["report_data"]) == (136, 328, 520)
    assert tdx.TD_REPORT_15.offsets["mr_service_td"] == 600
    assert tdx.BODY_DESCRIPTOR.size == 6
    assert tdx.QE_REPORT_CERT_FIXED.size == 384 + 64


# --- parsing -----------------------------------------------------------------------


def test_parse_v4() -> None:
    quote = tdx.TdxQuote.from_bytes(TDX_V4)
    assert (quote.version, quote.tee_type, quote.tee) == (4, quote_layout.TEE_TYPE_TDX, "TDX")
    assert quote.attestation_key_type == quote_layout.ATTESTATION_KEY_ECDSA_P256
    assert quote.qe_vendor_id == quote_layout.INTEL_QE_VENDOR_ID
    assert quote.body_type == tdx.BODY_TYPE_TD_REPORT_10
    assert quote.td_report.tee_tcb_svn2 is None
    assert quote.outer_cert_data_type == quote_layout.CERT_DATA_QE_REPORT == 6
    assert quote.cert_data_type == quote_layout.CERT_DATA_PCK_CHAIN == 5
    assert quote.cert_data.startswith(b"-----BEGIN CERTIFICATE-----")
    assert quote.padding == 70  # the sample's zero padding after the signature data
    assert quote.td_report.mr_td == TDX_V4[48 + 136 : 48 + 184]
    assert quote.report_data == TDX_V4[48 + 520 : 48 + 584]
    assert quote.debug is False
    assert quote.qe_report.report_data == quote_layout.qe_report_data_for(
        quote.attestation_key, quote.qe_auth_data
    )


def test_parse_v5_td_report_15() -> None:
    """tdx_quote_outdated is a v5 quote with a TD report 1.5 body (body type 3, 648 bytes)."""
    quote = tdx.TdxQuote.from_bytes(TDX_V5)
    assert (quote.version, quote.body_type) == (5, tdx.BODY_TYPE_TD_REPORT_15)
    assert int.from_bytes(TDX_V5[48:50], "little") == 3
    assert int.from_bytes(TDX_V5[50:54], "little") == 648
    assert quote.td_report.tee_tcb_svn2 is not None
    assert quote.td_report.mr_service_td is not None
    assert quote.padding == 0


@pytest.mark.parametrize("data", [TDX_V4, TDX_V5], ids=["v4", "v5"])
def test_round_trip(data: bytes) -> None:
    quote = quote_layout.parse_quote(data)
    assert quote.to_bytes() == data
    # The ISV signature covers everything before the signature data length.
    end = SIG_V4 if quote.version == 4 else SIG_V5
    assert quote.signed_bytes() == data[:end]


@pytest.mark.parametrize("data", [TDX_V4, TDX_V5], ids=["v4", "v5"])
def test_dcap_qvl_cross_check(data: bytes) -> None:
    dcap_qvl = pytest.importorskip("dcap_qvl")
    theirs = dcap_qvl.parse_quote(data)
    ours = quote_layout.parse_quote(data)
    assert isinstance(ours, tdx.TdxQuote)
    assert theirs.is_tdx()
    assert theirs.header.version == ours.version
    assert theirs.header.tee_type == ours.tee_type
    assert bytes(theirs.header.qe_vendor_id) == ours.qe_vendor_id
    assert bytes(theirs.header.user_data) == ours.user_data
    for name in TD_FIELDS:
        assert bytes(getattr(theirs.report, name)) == getattr(ours.td_report, name), name
    for i in range(4):
        assert bytes(getattr(theirs.report, f"rt_mr{i}")) == ours.td_report.rtmr[i]
    if ours.version == 5:
        assert bytes(theirs.report.tee_tcb_svn2) == ours.td_report.tee_tcb_svn2
        assert bytes(theirs.report.mr_service_td) == ours.td_report.mr_service_td
    assert theirs.fmspc().lower() == pck.pck_extension(quote_verify.pck_chain(ours)[0]).fmspc.hex()


def test_td_debug_is_td_attributes_bit_0() -> None:
    offset = 48 + tdx.TD_REPORT_10.offsets["td_attributes"]
    assert (
        quote_layout.parse_quote(flip(TDX_V4, offset, quote_layout.ATTRIBUTE_DEBUG_TD)).debug
        is True
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (TDX_V4[:40], "too short"),
        (TDX_V4[:600], "TD report body runs past the end"),
        (TDX_V4[: SIG_V4 + 2], "signature data length runs past the end"),
        (TDX_V4[: SIG_V4 + 4 + 100], "signature data runs past the end"),
        (TDX_V4[:-71], "signature data runs past the end"),
        (TDX_V4[:-1] + b"\x01", "not zero padding"),
        (flip(TDX_V4, 4, 0x81), r"TEE type 0x0 is not supported"),
        (flip(TDX_V5, 48, 0x03), "body type 0 is not supported"),
        (flip(TDX_V5, 48, 0x02), "body type 1 is not supported"),
        (flip(TDX_V5, 50, 0x01), "must be 648 bytes, the descriptor says 649"),
        (flip(TDX_V4, SIG_V4 + 4 + 128, 0x01), "certification data type 7 is not supported"),
        (flip(TDX_V4, SIG_V4 + 4 + 130, 0x01), "certification data length does not match"),
        (flip(TDX_V4, SIG_V4 + 4 + 134 + 449, 0xFF), "QE auth data runs past the end"),
    ],
)
def test_malformed_tdx_quotes(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        tdx.TdxQuote.from_bytes(data)


def test_nested_cert_data_length_mismatch() -> None:
    quote = tdx.TdxQuote.from_bytes(TDX_V4)
    pos = SIG_V4 + 4 + 134 + 448 + 2 + len(quote.qe_auth_data) + 2
    bad = bytearray(TDX_V4)
    bad[pos : pos + 4] = (len(quote.cert_data) - 1).to_bytes(4, "little")
    with pytest.raises(FormatError, match="nested certification data length"):
        tdx.TdxQuote.from_bytes(bytes(bad))


def test_oversized_quote() -> None:
    with pytest.raises(FormatError, match="more than"):
        tdx.TdxQuote.from_bytes(TDX_V4[:2] + bytes(1 << 16))


# --- verification ------------------------------------------------------------------


@pytest.mark.parametrize(("data", "now"), [(TDX_V4, NOW), (TDX_V5, NOW_V5)], ids=["v4", "v5"])
def test_verify_tdx_chain_and_signatures(data: bytes, now: datetime) -> None:
    verified = quote_verify.verify_quote(data, [quote_verify.intel_sgx_root()], now)
    assert verified.tee == "TDX"
    assert verified.td_report.mr_td == quote_layout.parse_quote(data).td_report.mr_td  # type: ignore[union-attr]
    assert verified.fmspc == ("b0c06f000000" if data is TDX_V4 else "90c06f000000")
    assert verified.tcb is None
    with pytest.raises(AttestationError, match="no SGX enclave report"):
        _ = verified.report


@pytest.mark.parametrize(
    "offset",
    [
        48 + tdx.TD_REPORT_10.offsets["mr_td"],
        48 + tdx.TD_REPORT_10.offsets["rtmr3"] + 47,
        48 + tdx.TD_REPORT_10.offsets["report_data"],
        48 + 583,
        8,
        28,
    ],
)
def test_flipped_td_report_byte_is_refused(offset: int) -> None:
    with pytest.raises(AttestationError, match="TD report signature does not verify"):
        quote_verify.verify_quote(flip(TDX_V4, offset), [quote_verify.intel_sgx_root()], NOW)


def test_flipped_v5_body_byte_is_refused() -> None:
    offset = 48 + 6 + tdx.TD_REPORT_15.offsets["mr_service_td"]
    with pytest.raises(AttestationError, match="TD report signature does not verify"):
        quote_verify.verify_quote(flip(TDX_V5, offset), [quote_verify.intel_sgx_root()], NOW_V5)


def test_flipped_qe_report_byte_is_refused() -> None:
    offset = SIG_V4 + 4 + 134 + 100
    with pytest.raises(AttestationError, match="QE report signature does not verify"):
        quote_verify.verify_quote(flip(TDX_V4, offset), [quote_verify.intel_sgx_root()], NOW)


def test_flipped_bytes_across_the_tdx_quote_are_refused() -> None:
    """Every 17th byte of the v4 sample, padding included: none may still verify."""
    accepted = []
    for i in range(0, len(TDX_V4), 17):
        try:
            quote_verify.verify_quote(flip(TDX_V4, i), [quote_verify.intel_sgx_root()], NOW)
        except DetenteError:
            continue
        accepted.append(i)
    assert accepted == []


def test_tdx_quote_with_sgx_tee_type_v3_refused() -> None:
    """A v3 quote claiming TEE type TDX is refused by the SGX verifier path."""
    with pytest.raises(AttestationError, match=r"TEE type 0x81 is not SGX"):
        quote_verify.verify_quote(
            SGX_QUOTE[:4] + (0x81).to_bytes(4, "little") + SGX_QUOTE[8:],
            [quote_verify.intel_sgx_root()],
            NOW,
        )


def test_td_report_15_needs_its_extra_fields() -> None:
    report = tdx.TdxQuote.from_bytes(TDX_V5).td_report
    with pytest.raises(FormatError, match="mr_service_td"):
        replace(report, mr_service_td=None).to_bytes()


# --- properties --------------------------------------------------------------------

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few bytes flipped, set, cut, inserted or deleted."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        action = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        i = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[i] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[i:]
        elif action == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i : i + draw(st.integers(1, 8))]
    return bytes(data)


def parses_or_detente_error(data: bytes) -> None:
    try:
        quote = quote_layout.parse_quote(data)
    except DetenteError:
        return
    # Whatever parses gives back exactly the bytes it came from.
    assert quote.to_bytes() == data


@PROPERTY
@given(st.binary(max_size=1200))
def test_random_bytes_with_tdx_header(tail: bytes) -> None:
    parses_or_detente_error(TDX_V4[:8] + tail)
    parses_or_detente_error(TDX_V5[:8] + tail)


@PROPERTY
@given(st.one_of(mutated(TDX_V4), mutated(TDX_V5)))
def test_mutated_tdx_quotes(data: bytes) -> None:
    parses_or_detente_error(data)


@settings(max_examples=40, deadline=None)
@given(mutated(TDX_V4))
def test_verify_mutated_tdx_quotes(data: bytes) -> None:
    try:
        quote_verify.verify_quote(data, [quote_verify.intel_sgx_root()], NOW)
    except DetenteError:
        return
    assert data == TDX_V4 or quote_layout.parse_quote(data).to_bytes() == data
