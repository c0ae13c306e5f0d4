"""Quote collateral (protocols/collateral.py): strict loading, and dcap-qvl verification at a time.

Expected values are those of tests/vectors/README.md.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import quote_verify
from protocols.collateral import (
    INSTALL_HINT,
    Collateral,
    CollateralVerifierMissing,
    TcbStatus,
    verify_collateral,
)
from protocols.errors import AttestationError, DetenteError, FormatError

pytest.importorskip("dcap_qvl")  # the dev extra installs it; verification needs it

SGX_DCAP = Path(__file__).resolve().parents[1] / "vectors" / "sgx-dcap"
INTEL = Path(__file__).resolve().parents[1] / "vectors" / "intel-qvl-sample"
SGX_QUOTE = (SGX_DCAP / "sgx_quote").read_bytes()
TDX_QUOTE = (SGX_DCAP / "tdx_quote").read_bytes()
TDX_OUTDATED = (SGX_DCAP / "tdx_quote_outdated").read_bytes()
SGX_TEXT = (SGX_DCAP / "sgx_quote_collateral.json").read_text()
SGX_COLLATERAL = Collateral.from_json(SGX_TEXT)
TDX_COLLATERAL = Collateral.from_json((SGX_DCAP / "tdx_quote_collateral.json").read_text())
OUTDATED_COLLATERAL = Collateral.from_json(
    (SGX_DCAP / "tdx_quote_outdated_collateral.json").read_text()
)
SGX_FIRST, SGX_LAST = 1750330571, 1752919278  # README: the SGX sample's window, inclusive
TDX_FIRST = int(datetime(2025, 6, 19, 10, 32, 27, tzinfo=UTC).timestamp())
TDX_LAST = int(datetime(2025, 7, 19, 10, 0, 35, tzinfo=UTC).timestamp())
ADVISORIES = ("INTEL-SA-00289", "INTEL-SA-00615")


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def verify(data: bytes, collateral: Collateral, seconds: int) -> quote_verify.VerifiedQuote:
    return quote_verify.verify_quote(
        data, [quote_verify.intel_sgx_root()], at(seconds), collateral=collateral
    )


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


# --- loading -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgx_quote", "tdx_quote", "tdx_quote_outdated"])
def test_vectors_load_and_round_trip(name: str) -> None:
    text = (SGX_DCAP / f"{name}_collateral.json").read_text()
    collateral = Collateral.from_json(text)
    assert json.loads(collateral.to_json()) == json.loads(text)
    assert Collateral.from_json(collateral.to_json()) == collateral


def test_what_the_collateral_says() -> None:
    tcb = SGX_COLLATERAL.tcb_info_summary()
    assert (tcb["id"], tcb["version"], tcb["fmspc"]) == ("SGX", 3, "00a067110000")
    assert (
        tcb["fmspc"]
        == quote_verify.verify_quote(
            SGX_QUOTE, [quote_verify.intel_sgx_root()], at(SGX_FIRST)
        ).fmspc
    )
    qe = SGX_COLLATERAL.qe_identity_summary()
    assert (qe["id"], qe["isv_prod_id"]) == ("QE", 1)
    assert TDX_COLLATERAL.tcb_info_summary()["id"] == "TDX"
    assert TDX_COLLATERAL.qe_identity_summary()["id"] == "TD_QE"


def test_validity_windows_match_the_readme() -> None:
    assert (SGX_COLLATERAL.validity().not_before, SGX_COLLATERAL.validity().not_after) == (
        SGX_FIRST,
        SGX_LAST,
    )
    assert (TDX_COLLATERAL.validity().not_before, TDX_COLLATERAL.validity().not_after) == (
        TDX_FIRST,
        TDX_LAST - 1,
    )


def edited(**changes: Any) -> str:
    doc = json.loads(SGX_TEXT)
    for key, value in changes.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "must be a JSON object"),
        ("{", "is not valid JSON"),
        ('{"a": 1', "is not valid JSON"),
        (edited(extra="x"), "unknown field 'extra'"),
        (edited(pck_crl=None), "has no field 'pck_crl'"),
        (edited(pck_crl=5), "field 'pck_crl' must be str"),
        (edited(pck_crl="zz"), "'pck_crl' must be hexadecimal"),
        (edited(pck_crl="ab cd"), "'pck_crl' must be hexadecimal"),
        (edited(pck_crl="abc"), "'pck_crl' must be hexadecimal"),
        (edited(root_ca_crl="3082"), "'root_ca_crl' is not a DER certificate revocation list"),
        (edited(tcb_info_signature="00" * 63), "must be a 64-byte ECDSA P-256 signature"),
        (edited(tcb_info_issuer_chain="not pem"), "'tcb_info_issuer_chain' is not a PEM"),
        (edited(pck_certificate_chain="-----BEGIN X-----"), "'pck_certificate_chain'"),
        (edited(tcb_info="[1]"), "TCB info must be a JSON object"),
        (edited(tcb_info="{"), "TCB info is not valid JSON"),
        (edited(tcb_info='{"version": 3}'), "TCB info has no field 'fmspc'"),
        (
            edited(tcb_info=SGX_COLLATERAL.tcb_info.replace("2025-06-19T10:56:11Z", "soon")),
            "issueDate 'soon' is not an ISO 8601 time",
        ),
        (
            edited(tcb_info=SGX_COLLATERAL.tcb_info.replace("2025-06-19T10:56:11Z", "2025-06-19")),
            "has no time zone",
        ),
        (
            edited(tcb_info=SGX_COLLATERAL.tcb_info.replace('"id":"SGX"', '"id":"SEV"')),
            "id 'SEV' must be SGX or TDX",
        ),
        (edited(qe_identity='{"id": "QE"}'), "QE identity has no field 'version'"),
        ("x" * (1 << 20 + 1), "more than"),
    ],
)
def test_bad_collateral_is_a_format_error_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        Collateral.from_json(text)


# --- verification at a time --------------------------------------------------------


@pytest.mark.parametrize("seconds", [SGX_FIRST, SGX_FIRST + 86400 * 10, SGX_LAST])
def test_sgx_sample_verifies_inside_its_window(seconds: int) -> None:
    verified = verify(SGX_QUOTE, SGX_COLLATERAL, seconds)
    assert verified.tcb == TcbStatus("ConfigurationAndSWHardeningNeeded", ADVISORIES)
    assert verified.fmspc == "00a067110000"


@pytest.mark.parametrize(
    ("seconds", "reason"),
    [
        (SGX_FIRST - 1, "not valid yet at .*the TCB info dates from 2025-06-19T10:56:11Z"),
        (SGX_LAST + 1, "has expired at .*the QE identity is valid until 2025-07-19T10:01:18Z"),
    ],
)
def test_sgx_sample_fails_one_second_outside_its_window(seconds: int, reason: str) -> None:
    with pytest.raises(AttestationError, match=reason):
        verify(SGX_QUOTE, SGX_COLLATERAL, seconds)


@pytest.mark.parametrize(
    ("seconds", "reason"),
    [(SGX_FIRST - 1, "TCBInfo issue date is in the future"), (SGX_LAST + 1, "QE Identity expired")],
)
def test_dcap_qvl_alone_also_refuses_outside_the_sgx_window(seconds: int, reason: str) -> None:
    """Our window check names the stale part; dcap-qvl's own check agrees at both ends."""
    import dcap_qvl

    theirs = dcap_qvl.QuoteCollateralV3.from_json(SGX_TEXT)
    with pytest.raises(ValueError, match=reason):
        dcap_qvl.verify(SGX_QUOTE, theirs, seconds)
    assert (
        dcap_qvl.verify(SGX_QUOTE, theirs, SGX_FIRST).status == "ConfigurationAndSWHardeningNeeded"
    )


def test_tdx_sample_is_up_to_date_inside_its_window_only() -> None:
    """README: 2025-06-19T10:32:27Z (QE identity issued) to 2025-07-19T10:00:35Z (PCK CRL
    nextUpdate, from which second on the CRL is stale)."""
    for seconds in (TDX_FIRST, TDX_LAST - 1):
        assert verify(TDX_QUOTE, TDX_COLLATERAL, seconds).tcb == TcbStatus("UpToDate")
    with pytest.raises(AttestationError, match=r"not valid yet .*QE identity"):
        verify(TDX_QUOTE, TDX_COLLATERAL, TDX_FIRST - 1)
    with pytest.raises(AttestationError, match=r"has expired .*PCK CRL"):
        verify(TDX_QUOTE, TDX_COLLATERAL, TDX_LAST)


def test_outdated_tdx_sample_is_rejected_for_its_tcb_level() -> None:
    window = OUTDATED_COLLATERAL.validity()
    middle = (window.not_before + window.not_after) // 2
    # Its own signatures and chain are fine: the refusal is the collateral's.
    quote_verify.verify_quote(TDX_OUTDATED, [quote_verify.intel_sgx_root()], at(middle))
    with pytest.raises(AttestationError, match="No matching TCB level found"):
        verify(TDX_OUTDATED, OUTDATED_COLLATERAL, middle)
    with pytest.raises(AttestationError, match="is not valid at"):
        verify(TDX_OUTDATED, OUTDATED_COLLATERAL, SGX_FIRST)  # its PCK certificate is younger


def test_collateral_of_another_platform_is_rejected() -> None:
    with pytest.raises(AttestationError, match="collateral does not verify"):
        verify(SGX_QUOTE, TDX_COLLATERAL, TDX_FIRST + 3600)
    with pytest.raises(AttestationError, match="collateral does not verify"):
        verify(TDX_QUOTE, SGX_COLLATERAL, SGX_FIRST + 3600)


def test_flipped_bytes_across_the_sgx_quote_fail_with_collateral() -> None:
    """A few hundred positions spread over all 4600 bytes; each flip must fail."""
    positions = sorted({*range(0, len(SGX_QUOTE), 15), len(SGX_QUOTE) - 1})
    assert len(positions) > 300
    accepted = []
    for i in positions:
        try:
            verify(flip(SGX_QUOTE, i), SGX_COLLATERAL, SGX_FIRST + 60)
        except DetenteError:
            continue
        accepted.append(i)
    assert accepted == []


def test_dcap_qvl_alone_refuses_flipped_signed_bytes() -> None:
    """The collateral check does not lean on ours for the signed parts of the quote."""
    for i in (112, 368, 436, 564, 1000, 2000):
        with pytest.raises(AttestationError, match="collateral does not verify"):
            verify_collateral(
                flip(SGX_QUOTE, i), SGX_COLLATERAL, SGX_FIRST, quote_verify.intel_sgx_root()
            )


def test_pem_framing_flips_pass_dcap_qvl_but_not_us() -> None:
    """dcap-qvl ignores the PEM text around the certificates (line breaks, the root's
    PEM, the trailing NUL): hundreds of single-byte flips pass it. Our canonical-PEM
    rule refuses each of them, so the whole quote is covered."""
    newline = SGX_QUOTE.index(b"\n", 1020 + 40)
    for i in (newline, len(SGX_QUOTE) - 1):
        altered = flip(SGX_QUOTE, i)
        assert verify_collateral(
            altered, SGX_COLLATERAL, SGX_FIRST, quote_verify.intel_sgx_root()
        ).status
        with pytest.raises(AttestationError, match="canonical PEM"):
            verify(altered, SGX_COLLATERAL, SGX_FIRST)


@pytest.mark.parametrize("name", ["tcb_info", "qe_identity"])
def test_altered_signed_collateral_is_rejected(name: str) -> None:
    text = getattr(SGX_COLLATERAL, name)
    doc = json.loads(SGX_TEXT)
    doc[name] = text.replace('"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18')
    assert doc[name] != text
    with pytest.raises(AttestationError, match="collateral does not verify"):
        verify(SGX_QUOTE, Collateral.from_json(json.dumps(doc)), SGX_FIRST + 60)


def test_intel_synthetic_sample_is_rejected_under_the_production_root() -> None:
    """Intel's QVL sample is signed by a test root: its own crypto holds, but not under ours."""

    def text(name: str) -> str:
        return (INTEL / name).read_text()

    collateral = Collateral.from_pcs(
        tcb_info_response=text("tcbInfo.json"),
        qe_identity_response=text("qeIdentity.json"),
        tcb_info_issuer_chain=text("tcbSignChain.pem"),
        pck_crl_issuer_chain=text("pckSignChain.pem"),
        root_ca_crl=(INTEL / "rootCaCrl.der").read_bytes(),
        pck_crl=(INTEL / "intermediateCaCrl.der").read_bytes(),
        pck_certificate_chain=text("pckCert.pem") + text("pckSignChain.pem"),
    )
    data = (INTEL / "quote.dat").read_bytes()
    now = datetime(2024, 1, 1, tzinfo=UTC)
    with pytest.raises(AttestationError, match="untrusted root"):
        quote_verify.verify_quote(data, [quote_verify.intel_sgx_root()], now, collateral=collateral)
    with pytest.raises(AttestationError, match="collateral does not verify"):
        verify_collateral(data, collateral, int(now.timestamp()), quote_verify.intel_sgx_root())
    # Under its own test root the quote's chain and signatures do verify: the
    # refusal above is the root's, not a parsing accident.
    test_root = x509.load_pem_x509_certificate((INTEL / "trustedRootCaCert.pem").read_bytes())
    verified = quote_verify.verify_quote(
        data, [test_root], now, pck_certificate_chain=collateral.pck_certificate_chain
    )
    assert verified.fmspc == collateral.tcb_info_summary()["fmspc"] == "00707f000000"
    # Without a chain in the quote or the collateral there is nothing to verify.
    with pytest.raises(AttestationError, match="certification data type 1 carries no PCK chain"):
        quote_verify.verify_quote(data, [test_root], now)


def test_pcs_response_signature_is_cut_out_byte_for_byte() -> None:
    response = '{"tcbInfo": {"b":1,  "a":[2]}, "signature":"' + "00" * 64 + '"}'
    qe = '{"enclaveIdentity":{"id":"QE"},"signature":"' + "11" * 64 + '"}'
    with pytest.raises(FormatError, match="TCB info has no field 'version'"):
        Collateral.from_pcs(
            tcb_info_response=response,
            qe_identity_response=qe,
            tcb_info_issuer_chain=SGX_COLLATERAL.tcb_info_issuer_chain,
            pck_crl_issuer_chain=SGX_COLLATERAL.pck_crl_issuer_chain,
            root_ca_crl=SGX_COLLATERAL.root_ca_crl,
            pck_crl=SGX_COLLATERAL.pck_crl,
        )
    from protocols.collateral import _signed_member

    assert _signed_member(response, "tcbInfo", "r") == ('{"b":1,  "a":[2]}', bytes(64))
    with pytest.raises(FormatError, match="has no field 'tcbInfo'"):
        _signed_member('{"signature": "00"}', "tcbInfo", "r")


def test_missing_dcap_qvl_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import dcap_qvl` raise ImportError: the
    # state of an installation without the [sgx] extra.
    monkeypatch.setitem(sys.modules, "dcap_qvl", None)
    with pytest.raises(CollateralVerifierMissing, match=r"pip install detente\[sgx\]"):
        verify(SGX_QUOTE, SGX_COLLATERAL, SGX_FIRST)
    assert INSTALL_HINT == "pip install detente[sgx]"
    # The quote's own checks need no dcap-qvl.
    assert (
        quote_verify.verify_quote(SGX_QUOTE, [quote_verify.intel_sgx_root()], at(SGX_FIRST)).tcb
        is None
    )


# --- properties: the loader takes anything and raises only DetenteError ------------

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def loads_or_detente_error(data: bytes | str) -> None:
    try:
        Collateral.from_json(data)
    except DetenteError:
        pass


@PROPERTY
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    loads_or_detente_error(data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*json.loads(SGX_TEXT), "x"]), JSON_VALUES))
def test_random_json_objects(doc: dict[str, Any]) -> None:
    loads_or_detente_error(json.dumps(doc))


@PROPERTY
@given(
    st.sampled_from(sorted(json.loads(SGX_TEXT))),
    st.integers(0, 10_000),
    st.sampled_from(["flip", "cut", "insert"]),
    st.text(max_size=4),
)
def test_mutated_fields(name: str, where: int, action: str, extra: str) -> None:
    doc = json.loads(SGX_TEXT)
    value = doc[name]
    i = where % (len(value) + 1)
    if action == "flip" and i < len(value):
        value = value[:i] + chr(ord(value[i]) ^ 1) + value[i + 1 :]
    elif action == "cut":
        value = value[:i]
    else:
        value = value[:i] + extra + value[i:]
    doc[name] = value
    loads_or_detente_error(json.dumps(doc))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, len(SGX_TEXT) - 1), st.integers(1, 255))
def test_mutated_collateral_never_verifies_except_unchanged(where: int, mask: int) -> None:
    raw = bytearray(SGX_TEXT.encode())
    raw[where] ^= mask
    try:
        collateral = Collateral.from_json(bytes(raw))
        verified = verify(SGX_QUOTE, collateral, SGX_FIRST + 60)
    except DetenteError:
        return
    # Only changes that do not alter what is signed may pass (JSON whitespace, hex case).
    assert verified.tcb == TcbStatus("ConfigurationAndSWHardeningNeeded", ADVISORIES)
    assert collateral.tcb_info == SGX_COLLATERAL.tcb_info
    assert collateral.qe_identity == SGX_COLLATERAL.qe_identity
