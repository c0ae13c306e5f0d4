"""SGX ECDSA quote v3 (protocols.quote_layout, quote_verify) against quotes in tests/vectors/."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from protocols import quote_layout, quote_verify
from protocols.errors import AttestationError, FormatError

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
SGX_QUOTE = (VECTORS / "sgx-dcap" / "sgx_quote").read_bytes()
QVL_QUOTE = (VECTORS / "intel-qvl-sample" / "quote.dat").read_bytes()
TDX_QUOTES = ["tdx_quote", "tdx_quote_outdated"]
NOW = datetime(2025, 7, 1, tzinfo=UTC)  # inside the PCK chain's validity
ROOT_FP = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
MRSIGNER = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"

# Offsets of the documented fields (tests/vectors/README.md, Intel quote v3 layout).
OFF_MRENCLAVE, OFF_MRSIGNER, OFF_REPORTDATA = 112, 176, 368
OFF_ISV_SIG, OFF_ATT_KEY, OFF_QE_REPORT, OFF_QE_SIG, OFF_AUTH_LEN = 436, 500, 564, 948, 1012


def verify(data: bytes, now: datetime = NOW) -> quote_verify.VerifiedQuote:
    return quote_verify.verify_quote(data, [quote_verify.intel_sgx_root()], now=now)


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


# --- parsing ------------------------------------------------------------------------


def test_layout_sizes_and_offsets() -> None:
    assert quote_layout.HEADER.size == 48
    assert quote_layout.REPORT_BODY.size == 384
    assert quote_layout.SIGNED_SIZE == 432
    assert quote_layout.REPORT_BODY.offsets["mr_enclave"] + 48 == OFF_MRENCLAVE
    assert quote_layout.REPORT_BODY.offsets["mr_signer"] + 48 == OFF_MRSIGNER
    assert quote_layout.REPORT_BODY.offsets["isv_prod_id"] + 48 == 304
    assert quote_layout.REPORT_BODY.offsets["isv_svn"] + 48 == 306
    assert quote_layout.REPORT_BODY.offsets["report_data"] + 48 == OFF_REPORTDATA
    assert quote_layout.REPORT_BODY.offsets["attributes"] + 48 == 96
    assert quote_layout.SIGNATURE_FIXED.offsets["qe_report"] + 436 == OFF_QE_REPORT
    assert quote_layout.SIGNATURE_FIXED.size + 436 == OFF_AUTH_LEN


def test_parse_real_sgx_quote() -> None:
    quote = quote_layout.Quote.from_bytes(SGX_QUOTE)
    assert len(SGX_QUOTE) == 4600
    assert quote.version == 3
    assert quote.attestation_key_type == quote_layout.ATTESTATION_KEY_ECDSA_P256
    assert quote.tee_type == quote_layout.TEE_TYPE_SGX
    assert quote.qe_vendor_id == quote_layout.INTEL_QE_VENDOR_ID
    assert quote.report.mr_enclave.hex() == MRENCLAVE
    assert quote.report.mr_signer.hex() == MRSIGNER
    assert quote.report.report_data == b"Hello, world!" + bytes(51)
    assert quote.report.debug is False
    assert quote.report.isv_prod_id == int.from_bytes(SGX_QUOTE[304:306], "little")
    assert quote.report.isv_svn == int.from_bytes(SGX_QUOTE[306:308], "little")
    assert (quote.report.isv_prod_id, quote.report.isv_svn) == (0, 0)
    assert quote.cert_data_type == quote_layout.CERT_DATA_PCK_CHAIN == 5
    assert quote.cert_data.startswith(b"-----BEGIN CERTIFICATE-----")
    assert quote.attestation_key == SGX_QUOTE[OFF_ATT_KEY : OFF_ATT_KEY + 64]
    assert quote.isv_signature == SGX_QUOTE[OFF_ISV_SIG : OFF_ISV_SIG + 64]
    # The QE report binds the attestation key (README: SHA-256(key ‖ auth) ‖ 32 zeros).
    assert quote.qe_report.report_data == (
        hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    )


def test_to_bytes_round_trips_byte_for_byte() -> None:
    assert quote_layout.Quote.from_bytes(SGX_QUOTE).to_bytes() == SGX_QUOTE
    assert quote_layout.Quote.from_bytes(SGX_QUOTE).signed_bytes() == SGX_QUOTE[:432]


def test_debug_flag_is_attribute_bit_1() -> None:
    debug = quote_layout.Quote.from_bytes(flip(SGX_QUOTE, 96, quote_layout.ATTRIBUTE_DEBUG))
    assert debug.report.debug is True


def test_dcap_qvl_cross_check() -> None:
    dcap_qvl = pytest.importorskip("dcap_qvl")
    theirs = dcap_qvl.parse_quote(SGX_QUOTE)
    ours = quote_layout.Quote.from_bytes(SGX_QUOTE)
    assert bytes(theirs.report.mr_enclave) == ours.report.mr_enclave
    assert bytes(theirs.report.mr_signer) == ours.report.mr_signer
    assert bytes(theirs.report.report_data) == ours.report.report_data
    assert theirs.header.version == ours.version
    assert theirs.header.qe_svn == ours.qe_svn
    assert theirs.header.pce_svn == ours.pce_svn


def test_intel_qvl_sample_parses() -> None:
    quote = quote_layout.Quote.from_bytes(QVL_QUOTE)
    assert quote.version == 3
    assert quote.cert_data_type == 1
    assert quote.report.mr_enclave == bytes(32)
    assert quote.report.mr_signer == bytes(32)
    assert quote.to_bytes() == QVL_QUOTE


def test_intel_qvl_sample_is_refused_for_its_cert_data_type() -> None:
    with pytest.raises(AttestationError, match=r"certification data type 1 .*type 5 is required"):
        verify(QVL_QUOTE)


@pytest.mark.parametrize("name", TDX_QUOTES)
def test_tdx_quotes_refused_by_v3_parser_but_parsed_by_parse_quote(name: str) -> None:
    """Quote.from_bytes is the SGX v3 layout only; parse_quote picks the layout by version."""
    data = (VECTORS / "sgx-dcap" / name).read_bytes()
    version = int.from_bytes(data[:2], "little")
    assert version in (4, 5)
    with pytest.raises(FormatError, match=f"unsupported quote version {version}"):
        quote_layout.Quote.from_bytes(data)
    parsed = quote_layout.parse_quote(data)
    assert parsed.tee == "TDX"
    assert parsed.version == version


@pytest.mark.parametrize("version", [0, 1, 2, 6, 0xFFFF])
def test_parse_quote_refuses_unknown_versions(version: int) -> None:
    data = version.to_bytes(2, "little") + SGX_QUOTE[2:]
    with pytest.raises(FormatError, match=f"unsupported quote version {version} "):
        quote_layout.parse_quote(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (SGX_QUOTE[:1013], "too short"),
        (SGX_QUOTE[:-1], "signature data length says"),
        (SGX_QUOTE + b"\x00", "signature data length says"),
        (bytes(1 << 17), "more than"),
    ],
)
def test_malformed_quotes(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        quote_layout.Quote.from_bytes(data)


def test_cert_data_length_mismatch() -> None:
    quote = quote_layout.Quote.from_bytes(SGX_QUOTE)
    pos = 436 + quote_layout.SIGNATURE_FIXED.size + 2 + len(quote.qe_auth_data) + 2
    bad = bytearray(SGX_QUOTE)
    bad[pos : pos + 4] = (len(quote.cert_data) - 1).to_bytes(4, "little")
    with pytest.raises(FormatError, match="certification data length"):
        quote_layout.Quote.from_bytes(bytes(bad))


def test_auth_data_length_past_end() -> None:
    bad = bytearray(SGX_QUOTE)
    bad[OFF_AUTH_LEN : OFF_AUTH_LEN + 2] = (0xFFFF).to_bytes(2, "little")
    with pytest.raises(FormatError, match="QE auth data runs past the end"):
        quote_layout.Quote.from_bytes(bytes(bad))


# --- verification ------------------------------------------------------------------


def test_intel_root_fingerprint() -> None:
    root = quote_verify.intel_sgx_root()
    assert quote_verify.certificate_fingerprint(root) == ROOT_FP
    vector_root = (VECTORS / "sgx-dcap" / "Intel_SGX_RootCA.der").read_bytes()
    assert hashlib.sha256(vector_root).hexdigest() == ROOT_FP


def test_intel_root_is_package_data() -> None:
    # quote_verify reads the root with importlib.resources, which finds it in an
    # installed wheel only if setuptools ships it as package data.
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "intel_sgx_root_ca.der" in pyproject["tool"]["setuptools"]["package-data"]["protocols"]
    package = Path(quote_verify.__file__).parent
    assert (package / "intel_sgx_root_ca.der").is_file()


def test_verify_real_quote() -> None:
    verified = verify(SGX_QUOTE)
    assert verified.root_fingerprint == ROOT_FP
    assert verified.report.mr_enclave.hex() == MRENCLAVE
    assert len(verified.chain) == 3
    assert quote_verify.certificate_fingerprint(verified.chain[-1]) == ROOT_FP


def test_verified_quote_cannot_be_forged() -> None:
    quote = quote_layout.Quote.from_bytes(SGX_QUOTE)
    with pytest.raises(TypeError, match="made only by"):
        quote_verify.VerifiedQuote(quote, ROOT_FP, [])


def test_untrusted_root() -> None:
    from cryptography import x509

    other_root = x509.load_pem_x509_certificate(
        (VECTORS / "intel-qvl-sample" / "trustedRootCaCert.pem").read_bytes()
    )
    with pytest.raises(AttestationError, match="untrusted root"):
        quote_verify.verify_quote(SGX_QUOTE, [other_root], now=NOW)
    with pytest.raises(AttestationError, match="untrusted root"):
        quote_verify.verify_quote(SGX_QUOTE, [], now=NOW)


@pytest.mark.parametrize(
    "now",
    [
        datetime(2023, 9, 20, 21, 53, 42, tzinfo=UTC),  # a second before the PCK leaf
        datetime(2030, 9, 20, 21, 53, 44, tzinfo=UTC),  # a second after the PCK leaf
        datetime(2050, 1, 1, tzinfo=UTC),
    ],
)
def test_time_outside_certificate_validity(now: datetime) -> None:
    with pytest.raises(AttestationError, match="is not valid at"):
        verify(SGX_QUOTE, now=now)


def test_time_at_validity_edges() -> None:
    verify(SGX_QUOTE, now=datetime(2023, 9, 20, 21, 53, 43, tzinfo=UTC))
    verify(SGX_QUOTE, now=datetime(2030, 9, 20, 21, 53, 43, tzinfo=UTC))
    with pytest.raises(AttestationError):
        verify(SGX_QUOTE, now=datetime(2030, 9, 20, 21, 53, 43, tzinfo=UTC) + timedelta(seconds=1))


@pytest.mark.parametrize(
    ("offset", "name"),
    [
        (OFF_MRENCLAVE, "MRENCLAVE"),
        (OFF_MRENCLAVE + 31, "MRENCLAVE"),
        (OFF_MRSIGNER, "MRSIGNER"),
        (OFF_REPORTDATA, "REPORTDATA"),
        (OFF_REPORTDATA + 63, "REPORTDATA"),
        (304, "ISVPRODID"),
        (306, "ISVSVN"),
        (96, "ATTRIBUTES"),
        (48, "CPUSVN"),
        (64, "MISCSELECT"),
        (8, "QE SVN"),
        (10, "PCE SVN"),
        (12, "QE vendor id"),
        (28, "user data"),
    ],
)
def test_flipped_report_byte_is_refused(offset: int, name: str) -> None:
    with pytest.raises(AttestationError, match="ISV report signature does not verify"):
        verify(flip(SGX_QUOTE, offset))


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (2, "unsupported attestation key type"),
        (4, r"TEE type .* is not SGX"),
    ],
)
def test_flipped_header_type_fields(offset: int, message: str) -> None:
    with pytest.raises(AttestationError, match=message):
        verify(flip(SGX_QUOTE, offset))


def test_flipped_version_is_a_format_error_naming_the_version() -> None:
    with pytest.raises(FormatError, match="unsupported quote version 2"):
        verify(flip(SGX_QUOTE, 0))


def test_every_flipped_byte_of_header_and_report_body_is_refused() -> None:
    """Every one of the 432 signed bytes is covered by the ISV signature, reserved ones too.

    The parser drops the report body's reserved fields and signed_bytes() rebuilds them
    as zeros, so a quote whose reserved bytes were altered still verifies today.
    """
    accepted = []
    for i in range(quote_layout.SIGNED_SIZE):
        try:
            verify(flip(SGX_QUOTE, i))
        except (AttestationError, FormatError):
            continue
        accepted.append(i)
    assert accepted == [], (
        f"quote verified with a flipped byte at {len(accepted)} offsets "
        f"(report body reserved fields), e.g. {accepted[:4]}"
    )


def test_every_flipped_byte_of_qe_report_is_refused() -> None:
    """Same for the QE report (offsets 564…947), signed by the PCK key."""
    accepted = []
    for i in range(OFF_QE_REPORT, OFF_QE_SIG):
        try:
            verify(flip(SGX_QUOTE, i))
        except AttestationError:
            continue
        accepted.append(i)
    assert accepted == [], (
        f"quote verified with a flipped QE report byte at {len(accepted)} offsets "
        f"(QE report reserved fields), e.g. {accepted[:4]}"
    )


def test_quote_with_nonzero_reserved_bytes_round_trips() -> None:
    """to_bytes() must give back the bytes that were parsed, reserved fields included."""
    data = flip(SGX_QUOTE, 68)  # report body reserved1
    assert quote_layout.Quote.from_bytes(data).to_bytes() == data


@pytest.mark.parametrize("offset", [OFF_ISV_SIG, OFF_ISV_SIG + 40, OFF_ISV_SIG + 63])
def test_flipped_isv_signature(offset: int) -> None:
    with pytest.raises(AttestationError, match="ISV report signature does not verify"):
        verify(flip(SGX_QUOTE, offset))


@pytest.mark.parametrize("offset", [OFF_ATT_KEY + 5, OFF_ATT_KEY + 63])
def test_flipped_attestation_key(offset: int) -> None:
    with pytest.raises(AttestationError, match=r"attestation key|P-256 point"):
        verify(flip(SGX_QUOTE, offset))


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (OFF_QE_REPORT + 64, "QE report signature does not verify"),  # QE MRENCLAVE
        (OFF_QE_REPORT + 320, "QE report signature does not verify"),  # QE REPORTDATA
        (OFF_QE_SIG + 3, "QE report signature does not verify"),
        (OFF_AUTH_LEN + 2, "QE report does not bind the quote's attestation key"),  # auth data
    ],
)
def test_flipped_qe_parts(offset: int, message: str) -> None:
    with pytest.raises(AttestationError, match=message):
        verify(flip(SGX_QUOTE, offset))


def test_flipped_byte_in_pck_certificate() -> None:
    quote = quote_layout.Quote.from_bytes(SGX_QUOTE)
    start = SGX_QUOTE.index(quote.cert_data)
    # A byte well inside the base64 of the first certificate's signature.
    pem_end = quote.cert_data.index(b"-----END CERTIFICATE-----")
    data = bytearray(SGX_QUOTE)
    i = start + pem_end - 20
    data[i] = ord("A") if data[i] != ord("A") else ord("B")
    with pytest.raises(AttestationError):
        verify(bytes(data))


def test_cert_data_not_pem() -> None:
    quote = quote_layout.Quote.from_bytes(SGX_QUOTE)
    start = SGX_QUOTE.index(quote.cert_data)
    data = SGX_QUOTE[:start] + b"x" * len(quote.cert_data)
    with pytest.raises(AttestationError, match="not valid PEM"):
        verify(data)


def test_chain_with_only_one_certificate() -> None:
    quote = quote_layout.Quote.from_bytes(SGX_QUOTE)
    first_end = quote.cert_data.index(b"-----END CERTIFICATE-----") + 25
    cert_data = quote.cert_data[:first_end]
    from dataclasses import replace

    short = replace(quote, cert_data=cert_data).to_bytes()
    with pytest.raises(AttestationError, match="must hold a leaf and its root"):
        verify(short)


def test_chain_with_intermediate_removed() -> None:
    """Leaf directly under the root: the issuer check must fail."""
    from dataclasses import replace

    quote = quote_layout.Quote.from_bytes(SGX_QUOTE)
    pems = quote.cert_data.rstrip(b"\x00").split(b"-----END CERTIFICATE-----\n")
    pems = [p + b"-----END CERTIFICATE-----\n" for p in pems if p.strip()]
    assert len(pems) == 3
    spliced = replace(quote, cert_data=pems[0] + pems[2] + b"\x00").to_bytes()
    with pytest.raises(AttestationError, match="is not validly issued by"):
        verify(spliced)
