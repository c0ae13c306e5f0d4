"""Attestation policy and verdict (protocols.policy, protocols.attestation): TCB statuses,
advisories, simulation, debug, evidence age, and the rule-by-rule verdict.

Hardware cases use the real quotes and collateral of tests/vectors/sgx-dcap/;
simulated evidence comes from a real SIMULATION platform (libos.sim).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from libos.sim import SimPlatform
from protocols import quote_layout, statements
from protocols.attestation import (
    Evidence,
    EvidenceRefused,
    assess_quote,
    report_data_for,
    verify_evidence,
)
from protocols.collateral import Collateral, TcbStatus
from protocols.documents import IdentityDocument
from protocols.errors import PolicyError
from protocols.keys import HpkePrivateKey, SigningKey
from protocols.policy import AttestationPolicy

pytest.importorskip("dcap_qvl")

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "sgx-dcap"
SGX_QUOTE = (VECTORS / "sgx_quote").read_bytes()
TDX_QUOTE = (VECTORS / "tdx_quote").read_bytes()
TDX_OUTDATED = (VECTORS / "tdx_quote_outdated").read_bytes()
SGX_COLLATERAL = Collateral.from_json((VECTORS / "sgx_quote_collateral.json").read_text())
TDX_COLLATERAL = Collateral.from_json((VECTORS / "tdx_quote_collateral.json").read_text())
OUTDATED_COLLATERAL = Collateral.from_json(
    (VECTORS / "tdx_quote_outdated_collateral.json").read_text()
)
IN_WINDOW = datetime.fromtimestamp(1751000000, UTC)
MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
MRSIGNER = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
STATUS = "ConfigurationAndSWHardeningNeeded"
ALL_RULES = ["identity", "quote", "simulation", "tcb", "measurement", "debug", "report-data", "age"]


def policy(**extra: Any) -> AttestationPolicy:
    return AttestationPolicy.from_dict({"mrenclave": [MRENCLAVE], **extra})


def rules(verdict: Any) -> dict[str, tuple[bool, str]]:
    return {r.name: (r.passed, r.detail) for r in verdict}


# --- policy file ---------------------------------------------------------------------


def test_defaults_are_strict() -> None:
    p = AttestationPolicy.from_toml(f'mrenclave = ["{MRENCLAVE}"]')
    assert p.accept_tcb_status == ("UpToDate",)
    assert (p.allow_debug, p.allow_simulation) == (False, False)
    assert p.max_evidence_age_seconds == 3600


def test_each_relaxation_is_named() -> None:
    p = AttestationPolicy.from_toml(
        f'mrenclave = ["{MRENCLAVE}"]\n'
        'accept_tcb_status = ["SWHardeningNeeded", "ConfigurationAndSWHardeningNeeded"]\n'
    )
    assert p.accept_tcb_status == ("UpToDate", "SWHardeningNeeded", STATUS)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('accept_tcb_status = ["Revoked"]', "can never be accepted"),
        ('accept_tcb_status = ["Simulation"]', "allow_simulation"),
        ('accept_tcb_status = ["upToDate"]', "'upToDate' is not a TCB status"),
        ('accept_tcb_status = "UpToDate"', "must be list"),
        ("max_evidence_age_seconds = 0", "must be positive"),
        ('mrtd = ["00"]', "mrtd entry '00' must be 96 hex characters"),
        (f'mrenclave = ["{MRENCLAVE[:-2]} 0"]', "must be 64 hex characters"),
        ("allow_debug = 1", "allow_debug = 1 must be bool"),
        ("accept_tcb = []", "unknown key 'accept_tcb'"),
    ],
)
def test_bad_policy_names_the_key(toml: str, message: str) -> None:
    text = toml if toml.startswith("mrenclave") else f'mrenclave = ["{MRENCLAVE}"]\n{toml}'
    with pytest.raises(PolicyError, match=message):
        AttestationPolicy.from_toml(text)


def test_a_tdx_only_policy_names_mrtd() -> None:
    mrtd = "ab" * 48
    assert AttestationPolicy.from_toml(f'mrtd = ["{mrtd.upper()}"]').mrtd == (mrtd,)
    with pytest.raises(PolicyError, match="names no enclave"):
        AttestationPolicy.from_toml("allow_debug = false")


# --- hardware quotes: TCB status, advisories, collateral -----------------------------


def test_default_policy_refuses_the_samples_tcb_status_and_names_the_advisories() -> None:
    result = assess_quote(SGX_QUOTE, policy(), collateral=SGX_COLLATERAL, now=IN_WINDOW)
    got = rules(result.verdict)
    assert list(got) == ["quote", "simulation", "tcb", "measurement", "debug"]
    assert got["quote"][0] and got["measurement"][0] and got["debug"][0]
    passed, detail = got["tcb"]
    assert not passed
    assert f"TCB status {STATUS} is not accepted" in detail
    assert "INTEL-SA-00289, INTEL-SA-00615" in detail
    assert f'add "{STATUS}" to accept_tcb_status' in detail
    assert result.tcb == TcbStatus(STATUS, ("INTEL-SA-00289", "INTEL-SA-00615"))
    assert not result.passed


def test_a_named_relaxation_accepts_it_and_still_reports_the_advisories() -> None:
    relaxed = policy(accept_tcb_status=[STATUS])
    result = assess_quote(SGX_QUOTE, relaxed, collateral=SGX_COLLATERAL, now=IN_WINDOW)
    assert result.passed
    passed, detail = rules(result.verdict)["tcb"]
    assert passed and "relaxation" in detail and "INTEL-SA-00615" in detail
    assert result.verified is not None and result.verified.tcb == result.tcb


def test_another_relaxation_does_not_cover_this_status() -> None:
    other = policy(accept_tcb_status=["SWHardeningNeeded"])
    result = assess_quote(SGX_QUOTE, other, collateral=SGX_COLLATERAL, now=IN_WINDOW)
    assert not rules(result.verdict)["tcb"][0]


def test_hardware_quote_without_collateral_fails_the_tcb_rule() -> None:
    result = assess_quote(SGX_QUOTE, policy(accept_tcb_status=[STATUS]), now=IN_WINDOW)
    passed, detail = rules(result.verdict)["tcb"]
    assert rules(result.verdict)["quote"][0]
    assert not passed and "no collateral" in detail and "PCCS" in detail


def test_stale_collateral_fails_the_tcb_rule_only() -> None:
    late = datetime.fromtimestamp(1752919279, UTC)
    result = assess_quote(
        SGX_QUOTE, policy(accept_tcb_status=[STATUS]), collateral=SGX_COLLATERAL, now=late
    )
    got = rules(result.verdict)
    assert got["quote"][0]
    assert not got["tcb"][0] and "has expired" in got["tcb"][1]


def test_without_a_policy_only_verification_counts() -> None:
    result = assess_quote(SGX_QUOTE, None, collateral=SGX_COLLATERAL, now=IN_WINDOW)
    assert [r.name for r in result.verdict] == ["quote", "tcb"]
    assert result.passed and STATUS in rules(result.verdict)["tcb"][1]
    bare = assess_quote(SGX_QUOTE, None, now=IN_WINDOW)
    assert bare.passed and "not checked" in rules(bare.verdict)["tcb"][1]


def test_tdx_measurement_and_tcb() -> None:
    mrtd = quote_layout.parse_quote(TDX_QUOTE).td_report.mr_td.hex()  # type: ignore[union-attr]
    tdx_policy = AttestationPolicy.from_dict({"mrtd": [mrtd]})
    ok = assess_quote(TDX_QUOTE, tdx_policy, collateral=TDX_COLLATERAL, now=IN_WINDOW)
    assert ok.passed, ok.verdict
    assert "TDX quote v4" in rules(ok.verdict)["quote"][1]
    assert rules(ok.verdict)["tcb"] == (True, "TCB status UpToDate accepted")
    # The same quote under an SGX-only policy: the measurement rule says why.
    sgx_only = assess_quote(TDX_QUOTE, policy(), collateral=TDX_COLLATERAL, now=IN_WINDOW)
    assert "pins no mrtd" in rules(sgx_only.verdict)["measurement"][1]


def test_outdated_tdx_sample_is_refused_under_any_policy() -> None:
    mrtd = quote_layout.parse_quote(TDX_OUTDATED).td_report.mr_td.hex()  # type: ignore[union-attr]
    lenient = AttestationPolicy.from_dict(
        {"mrtd": [mrtd], "accept_tcb_status": ["OutOfDate", "OutOfDateConfigurationNeeded"]}
    )
    when = datetime(2026, 3, 1, tzinfo=UTC)
    result = assess_quote(TDX_OUTDATED, lenient, collateral=OUTDATED_COLLATERAL, now=when)
    passed, detail = rules(result.verdict)["tcb"]
    assert not passed and "No matching TCB level found" in detail
    assert rules(result.verdict)["quote"][0]


def test_mrsigner_rule() -> None:
    p = AttestationPolicy.from_dict(
        {"mrsigner": MRSIGNER, "isv_prod_id": 0, "min_isv_svn": 0, "accept_tcb_status": [STATUS]}
    )
    assert assess_quote(SGX_QUOTE, p, collateral=SGX_COLLATERAL, now=IN_WINDOW).passed
    newer = AttestationPolicy.from_dict({"mrsigner": MRSIGNER, "isv_prod_id": 0, "min_isv_svn": 1})
    passed, detail = rules(assess_quote(SGX_QUOTE, newer, now=IN_WINDOW).verdict)["measurement"]
    assert not passed and "SVN 0 do not match" in detail and "SVN ≥ 1" in detail


def test_debug_is_refused_by_default_and_each_rule_is_reported() -> None:
    debug_quote = bytearray(SGX_QUOTE)
    debug_quote[96] |= quote_layout.ATTRIBUTE_DEBUG  # breaks the signature too: both rules fail
    result = assess_quote(bytes(debug_quote), policy(), collateral=SGX_COLLATERAL, now=IN_WINDOW)
    got = rules(result.verdict)
    assert not got["quote"][0] and "ISV report signature" in got["quote"][1]
    assert not got["debug"][0] and "refused" in got["debug"][1]
    assert not got["tcb"][0] and "the quote does not verify" in got["tcb"][1]
    allowed = assess_quote(bytes(debug_quote), policy(allow_debug=True), now=IN_WINDOW)
    assert rules(allowed.verdict)["debug"] == (True, "debug enclave (allowed)")


def test_garbage_is_refused_with_a_verdict() -> None:
    result = assess_quote(b"\x03\x00garbage", policy(), now=IN_WINDOW)
    got = rules(result.verdict)
    assert not got["quote"][0] and "too short" in got["quote"][1]
    assert got["measurement"] == (False, "no parsable quote")
    assert got["simulation"] == (False, "no parsable quote")


# --- evidence: simulated platform --------------------------------------------------


class SimEnclave:
    """A SIMULATION enclave: a real libos sim platform, real keys, real signatures."""

    def __init__(self, directory: Path, debug: bool = False) -> None:
        self.platform = SimPlatform(directory)
        self.key = SigningKey.generate()
        self.mrenclave = hashlib.sha256(b"attest-policy-test enclave").digest()
        self.debug = debug

    def evidence(self, nonce: bytes, **extra: Any) -> Evidence:
        doc = IdentityDocument(
            backend="sim",
            hpke_key=HpkePrivateKey.generate().public_key,
            signing_key=self.key.verify_key,
            tls_public_key_sha256="00" * 32,
        ).to_dict()
        doc.update(extra)
        envelope = statements.sign(statements.IDENTITY, doc, self.key)
        flags = 0x05 | (quote_layout.ATTRIBUTE_DEBUG if self.debug else 0)
        report = quote_layout.ReportBody(
            cpu_svn=bytes(16),
            misc_select=0,
            attributes=flags.to_bytes(8, "little") + (3).to_bytes(8, "little"),
            mr_enclave=self.mrenclave,
            mr_signer=hashlib.sha256(b"signer").digest(),
            isv_prod_id=1,
            isv_svn=1,
            report_data=report_data_for(envelope.payload, nonce),
        )
        return Evidence(envelope.to_bytes(), self.platform.quote(report), "sim")

    def policy(self, **extra: Any) -> AttestationPolicy:
        return AttestationPolicy.from_dict(
            {
                "mrenclave": [self.mrenclave.hex()],
                "allow_simulation": True,
                "simulation_roots": [self.platform.root_fingerprint],
                **extra,
            }
        )


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimEnclave:
    return SimEnclave(tmp_path_factory.mktemp("sim") / "platform")


NONCE = bytes(range(32))


def test_simulated_evidence_passes_every_rule_when_allowed(sim: SimEnclave) -> None:
    enclave = verify_evidence(sim.evidence(NONCE), NONCE, sim.policy())
    assert [r.name for r in enclave.verdict] == ALL_RULES
    assert all(r.passed for r in enclave.verdict)
    assert enclave.simulation and enclave.tcb == TcbStatus("Simulation")
    assert "TCB status Simulation" in rules(enclave.verdict)["tcb"][1]
    assert enclave.mrenclave == sim.mrenclave.hex()


def test_simulated_evidence_is_refused_by_default(sim: SimEnclave) -> None:
    strict = AttestationPolicy.from_dict(
        {"mrenclave": [sim.mrenclave.hex()], "simulation_roots": [sim.platform.root_fingerprint]}
    )
    with pytest.raises(EvidenceRefused) as refused:
        verify_evidence(sim.evidence(NONCE), NONCE, strict)
    got = rules(refused.value.verdict)
    assert list(got) == ALL_RULES
    assert not got["simulation"][0] and "allow_simulation" in got["simulation"][1]
    assert not got["tcb"][0]
    assert got["measurement"][0] and got["report-data"][0]
    # Not even pinned: the quote rule says what to pin.
    with pytest.raises(EvidenceRefused, match="pin it in the policy's simulation_roots"):
        verify_evidence(sim.evidence(NONCE), NONCE, policy(allow_simulation=True))


def test_collateral_is_not_used_for_simulated_evidence(sim: SimEnclave) -> None:
    enclave = verify_evidence(sim.evidence(NONCE), NONCE, sim.policy(), collateral=SGX_COLLATERAL)
    assert "the collateral given was not used" in rules(enclave.verdict)["tcb"][1]


def test_debug_enclave_refused_unless_allowed(tmp_path: Path) -> None:
    debug = SimEnclave(tmp_path / "platform", debug=True)
    with pytest.raises(EvidenceRefused, match="debug: debug enclave \\(refused"):
        verify_evidence(debug.evidence(NONCE), NONCE, debug.policy())
    enclave = verify_evidence(debug.evidence(NONCE), NONCE, debug.policy(allow_debug=True))
    assert enclave.quote.report.debug


def test_wrong_nonce_fails_report_data(sim: SimEnclave) -> None:
    with pytest.raises(EvidenceRefused, match="wrong nonce"):
        verify_evidence(sim.evidence(NONCE), bytes(32), sim.policy())


def test_evidence_age_from_the_caller(sim: SimEnclave) -> None:
    now = datetime.now(UTC)
    p = sim.policy(max_evidence_age_seconds=60)
    enclave = verify_evidence(
        sim.evidence(NONCE), NONCE, p, now, evidence_time=now - timedelta(seconds=59)
    )
    assert rules(enclave.verdict)["age"] == (
        True,
        "evidence is 59 s old (max_evidence_age_seconds = 60)",
    )
    with pytest.raises(EvidenceRefused, match="age: evidence is 61 s old, older than"):
        verify_evidence(sim.evidence(NONCE), NONCE, p, now, evidence_time=int(now.timestamp()) - 61)
    with pytest.raises(EvidenceRefused, match="dated 3600 s in the future"):
        verify_evidence(sim.evidence(NONCE), NONCE, p, now, evidence_time=now + timedelta(hours=1))


def test_evidence_age_from_the_signed_identity_document(sim: SimEnclave) -> None:
    now = datetime.now(UTC)
    p = sim.policy(max_evidence_age_seconds=60)
    old = sim.evidence(NONCE, issued_at=int(now.timestamp()) - 120)
    with pytest.raises(EvidenceRefused, match="evidence is 120 s old"):
        verify_evidence(old, NONCE, p, now)
    fresh = sim.evidence(NONCE, issued_at=int(now.timestamp()) - 5)
    assert verify_evidence(fresh, NONCE, p, now)
    with pytest.raises(EvidenceRefused, match="field 'issued_at' must be"):
        verify_evidence(sim.evidence(NONCE, issued_at="yesterday"), NONCE, p, now)


def test_no_time_means_the_nonce_carries_freshness(sim: SimEnclave) -> None:
    enclave = verify_evidence(sim.evidence(NONCE), NONCE, sim.policy())
    passed, detail = rules(enclave.verdict)["age"]
    assert passed and "freshness rests on the nonce" in detail


# --- evidence: hardware quote ------------------------------------------------------


def test_hardware_evidence_verdict_lists_every_rule(sim: SimEnclave) -> None:
    """A real quote with an identity document it does not attest: quote and TCB pass,
    report-data fails, and the verdict says each."""
    identity = sim.evidence(NONCE).identity
    evidence = Evidence(identity, SGX_QUOTE, "gramine")
    relaxed = policy(accept_tcb_status=[STATUS])
    with pytest.raises(EvidenceRefused) as refused:
        verify_evidence(evidence, NONCE, relaxed, IN_WINDOW, collateral=SGX_COLLATERAL)
    got = rules(refused.value.verdict)
    assert list(got) == ALL_RULES
    assert got["quote"][0] and got["simulation"] == (True, "hardware evidence")
    assert got["tcb"][0] and "INTEL-SA-00289" in got["tcb"][1]
    assert not got["report-data"][0]
    assert "identity document is not the one the quote attests" in got["report-data"][1]
    # Without the relaxation the TCB rule fails as well, naming the status.
    with pytest.raises(EvidenceRefused, match=f"tcb: TCB status {STATUS} is not accepted"):
        verify_evidence(evidence, NONCE, policy(), IN_WINDOW, collateral=SGX_COLLATERAL)
