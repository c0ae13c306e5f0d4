"""Each attestation rule alone (protocols.attestation.rule_*): one function, one judgement.

test_protocols_attest_policy.py checks whole verdicts; these tests hand each
rule exactly what it judges, so a failing rule names itself. Quotes are the
real ones of tests/vectors/sgx-dcap/; no collateral or dcap-qvl is needed.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from protocols import quote_layout, statements
from protocols.attestation import (
    IdentityCheck,
    QuoteCheck,
    Rule,
    TcbCheck,
    check_quote,
    read_identity,
    report_data_for,
    rule_age,
    rule_debug,
    rule_identity,
    rule_measurement,
    rule_quote,
    rule_report_data,
    rule_simulation,
    rule_tcb,
)
from protocols.documents import IdentityDocument
from protocols.keys import HpkePrivateKey, SigningKey
from protocols.policy import AttestationPolicy

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "sgx-dcap"
SGX_QUOTE = (VECTORS / "sgx_quote").read_bytes()
TDX_QUOTE = (VECTORS / "tdx_quote").read_bytes()
MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
NOW = datetime(2025, 7, 1, tzinfo=UTC)
NONCE = bytes(range(32))


def policy(**extra: Any) -> AttestationPolicy:
    return AttestationPolicy.from_dict({"mrenclave": [MRENCLAVE], **extra})


def sgx_quote() -> quote_layout.Quote:
    quote = quote_layout.parse_quote(SGX_QUOTE)
    assert isinstance(quote, quote_layout.Quote)
    return quote


def debug_quote() -> quote_layout.Quote:
    quote = sgx_quote()
    attributes = bytearray(quote.report.attributes)
    attributes[0] |= quote_layout.ATTRIBUTE_DEBUG
    return replace(quote, report=replace(quote.report, attributes=bytes(attributes)))


def identity_envelope(signer: SigningKey, named: SigningKey) -> bytes:
    doc = IdentityDocument(
        backend="sim",
        hpke_key=HpkePrivateKey.generate().public_key,
        signing_key=named.verify_key,
        tls_public_key_sha256="00" * 32,
    ).to_dict()
    return statements.sign(statements.IDENTITY, doc, signer).to_bytes()


# --- identity ------------------------------------------------------------------------


def test_identity_signed_by_the_key_it_names_passes() -> None:
    key = SigningKey.generate()
    check = read_identity(identity_envelope(key, key))
    assert check.identity is not None and check.payload is not None
    assert rule_identity(check) == Rule(
        "identity", True, f"enclave signing key {key.verify_key.hex[:16]}…"
    )


def test_identity_signed_by_another_key_fails_but_keeps_its_payload() -> None:
    check = read_identity(identity_envelope(SigningKey.generate(), SigningKey.generate()))
    assert check.identity is None and check.payload is not None
    assert rule_identity(check) == Rule(
        "identity", False, "identity document is not signed by the key it names"
    )


def test_identity_that_does_not_parse_fails() -> None:
    check = read_identity(b"not an envelope")
    assert check.payload is None
    rule = rule_identity(check)
    assert rule.name == "identity" and not rule.passed and rule.detail


# --- quote and simulation ------------------------------------------------------------


def test_quote_that_does_not_parse_fails() -> None:
    check = check_quote(b"\x03\x00garbage", (), None, NOW)
    assert check.quote is None and check.verified is None
    rule = rule_quote(check)
    assert not rule.passed and "too short" in rule.detail


def test_real_quote_passes_the_quote_rule() -> None:
    check = check_quote(SGX_QUOTE, (), None, NOW)
    assert check.verified is not None and not check.simulation
    rule = rule_quote(check)
    assert rule.passed and rule.detail.startswith("SGX quote v3: signature chain to the Intel")


def test_unpinned_simulation_root_says_what_to_pin() -> None:
    check = QuoteCheck(sgx_quote(), None, simulation=True, pinned=False, error="untrusted root")
    assert rule_quote(check) == Rule(
        "quote",
        False,
        "untrusted root: a SIMULATION root; pin it in the policy's simulation_roots "
        "(and set allow_simulation = true) to accept simulation evidence",
    )


def test_simulation_refused_without_allow_simulation() -> None:
    check = QuoteCheck(sgx_quote(), None, simulation=True, pinned=True)
    assert rule_simulation(check, policy()) == Rule(
        "simulation",
        False,
        "SIMULATION evidence: no hardware protection; refused (the policy does not set "
        "allow_simulation = true)",
    )
    allowed = rule_simulation(check, policy(allow_simulation=True))
    assert allowed.passed and allowed.detail.endswith("allowed by allow_simulation = true")


def test_simulation_rule_on_hardware_and_on_no_quote() -> None:
    assert rule_simulation(QuoteCheck(sgx_quote()), policy()) == Rule(
        "simulation", True, "hardware evidence"
    )
    assert rule_simulation(QuoteCheck(None), policy()) == Rule(
        "simulation", False, "no parsable quote"
    )


# --- tcb -------------------------------------------------------------------------------


def test_tcb_of_simulated_evidence_follows_allow_simulation() -> None:
    check = QuoteCheck(sgx_quote(), None, simulation=True, pinned=True)
    tcb = TcbCheck(None, collateral=True)
    refused = rule_tcb(check, tcb, policy())
    assert not refused.passed and refused.detail.endswith("the collateral given was not used")
    assert rule_tcb(check, tcb, policy(allow_simulation=True)).passed


def test_tcb_of_hardware_without_collateral_needs_it_under_a_policy() -> None:
    check = check_quote(SGX_QUOTE, (), None, NOW)
    tcb = TcbCheck(check.verified)
    refused = rule_tcb(check, tcb, policy())
    assert not refused.passed and "fetch the quote's collateral" in refused.detail
    assert rule_tcb(check, tcb, None) == Rule(
        "tcb", True, "not checked: no collateral given for this hardware quote"
    )


def test_tcb_of_a_quote_that_does_not_verify_fails() -> None:
    check = QuoteCheck(sgx_quote(), None, error="ISV report signature does not verify")
    assert rule_tcb(check, TcbCheck(None, collateral=True), None) == Rule(
        "tcb", False, "not checked: the quote does not verify"
    )


# --- measurement and debug -------------------------------------------------------------


def test_measurement_mismatch() -> None:
    other = "00" * 32
    assert rule_measurement(sgx_quote(), policy(mrenclave=[other])) == Rule(
        "measurement", False, f"MRENCLAVE {MRENCLAVE} is not in the policy"
    )
    assert rule_measurement(sgx_quote(), policy()) == Rule(
        "measurement", True, f"MRENCLAVE {MRENCLAVE} is allowed"
    )


def test_measurement_of_a_tdx_quote_under_an_sgx_policy() -> None:
    rule = rule_measurement(quote_layout.parse_quote(TDX_QUOTE), policy())
    assert not rule.passed and rule.detail.endswith("cannot match: the policy pins no mrtd (TDX)")


def test_debug_refused() -> None:
    assert rule_debug(debug_quote(), policy()) == Rule(
        "debug", False, "debug enclave (refused: its memory is readable by the host)"
    )
    assert rule_debug(debug_quote(), policy(allow_debug=True)) == Rule(
        "debug", True, "debug enclave (allowed)"
    )
    assert rule_debug(sgx_quote(), policy()) == Rule(
        "debug", True, "production (non-debug) enclave"
    )


# --- report-data -----------------------------------------------------------------------


def test_report_data_mismatch() -> None:
    payload = b"identity document payload"
    report_data = report_data_for(payload, NONCE)
    assert rule_report_data(report_data, payload, NONCE) == Rule(
        "report-data", True, "REPORTDATA binds the identity document and this nonce"
    )
    wrong_nonce = rule_report_data(report_data, payload, bytes(32))
    assert not wrong_nonce.passed and wrong_nonce.detail.endswith(
        "wrong nonce (stale or replayed evidence)"
    )
    other_identity = rule_report_data(report_data, b"another document", NONCE)
    assert not other_identity.passed and other_identity.detail.endswith(
        "the identity document is not the one the quote attests"
    )


def test_report_data_without_an_identity_or_with_a_short_nonce() -> None:
    assert rule_report_data(bytes(64), None, NONCE) == Rule(
        "report-data", False, "no valid identity document to bind"
    )
    short = rule_report_data(bytes(64), b"payload", b"short")
    assert not short.passed and "nonce must be 32 bytes" in short.detail


def test_identity_check_payload_feeds_the_report_data_rule() -> None:
    key = SigningKey.generate()
    check: IdentityCheck = read_identity(identity_envelope(key, key))
    assert check.payload is not None
    report_data = report_data_for(check.payload, NONCE)
    assert rule_report_data(report_data, check.payload, NONCE).passed


# --- age -------------------------------------------------------------------------------


def test_age_too_old() -> None:
    produced = int(NOW.timestamp()) - 3601
    assert rule_age(produced, NOW, policy()) == Rule(
        "age",
        False,
        "evidence is 3601 s old, older than max_evidence_age_seconds = 3600: "
        "attest again for fresh evidence",
    )
    assert rule_age(produced + 1, NOW, policy()) == Rule(
        "age", True, "evidence is 3600 s old (max_evidence_age_seconds = 3600)"
    )


@pytest.mark.parametrize(
    ("ahead", "passed"),
    [(timedelta(seconds=300), True), (timedelta(seconds=301), False)],
)
def test_age_tolerates_only_small_clock_skew(ahead: timedelta, passed: bool) -> None:
    rule = rule_age(int((NOW + ahead).timestamp()), NOW, policy())
    assert rule.passed is passed
    if not passed:
        assert rule.detail == "the evidence is dated 301 s in the future: check the clocks"


def test_age_without_a_time_rests_on_the_nonce() -> None:
    rule = rule_age(None, NOW, policy(max_evidence_age_seconds=60))
    assert rule.passed and "freshness rests on the nonce (max 60 s" in rule.detail
