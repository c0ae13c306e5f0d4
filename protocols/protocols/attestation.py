"""Evidence and its verdict, rule by rule, under an attestation policy.

The steps: docs/protocol.md §2; the formats and rules: protocols/SPEC.md §7.

Evidence is an enclave's identity document (a self-signed statement of its
HPKE, signing and TLS keys) plus a quote whose REPORTDATA is

    SHA-256(identity document payload bytes) ‖ nonce (32 bytes)

The verifier checks every rule of the policy (protocols.policy) and returns
a :class:`VerifiedEnclave` only when all pass; otherwise it raises
AttestationError carrying the whole verdict, rule by rule. Each rule is one
function (``rule_identity`` … ``rule_age``) judging what the checks found
(``read_identity``, ``check_quote``, ``check_tcb``), so each can be tested alone.

Simulation evidence (a quote whose chain ends in a simulation root) gives NO
hardware protection: it is refused unless the policy says
``allow_simulation = true`` and pins that simulation root.

Hardware evidence is judged on its TCB too: given the quote's collateral
(protocols.collateral), the TCB status must be one the policy accepts
(``UpToDate`` only, unless relaxations are named in ``accept_tcb_status``);
the advisories that apply are reported in the verdict either way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from protocols import canonical, statements
from protocols.collateral import TCB_SIMULATION, TCB_UP_TO_DATE, Collateral, TcbStatus
from protocols.documents import IdentityDocument
from protocols.errors import AttestationError, DetenteError
from protocols.policy import AttestationPolicy
from protocols.quote_layout import Quote, parse_quote
from protocols.quote_verify import (
    VerifiedQuote,
    certificate_fingerprint,
    check_collateral,
    intel_sgx_root,
    pck_chain,
    verify_quote,
)

if TYPE_CHECKING:
    from protocols.tdx import TdxQuote
from protocols.statements import Envelope

NONCE_SIZE = 32
# Evidence stamped up to this far in the future is tolerated (clock skew).
CLOCK_SKEW_SECONDS = 300


def report_data_for(identity_payload: bytes, nonce: bytes) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise AttestationError(f"attestation nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    return hashlib.sha256(identity_payload).digest() + nonce


@dataclass(frozen=True)
class Evidence:
    identity: bytes  # DSSE envelope bytes of the identity document
    quote: bytes
    backend: str


@dataclass(frozen=True)
class Rule:
    name: str
    passed: bool
    detail: str


_TOKEN = object()
SIMULATION_TCB = TcbStatus(TCB_SIMULATION)


@dataclass(frozen=True)
class VerifiedEnclave:
    """An enclave whose evidence passed every policy rule. Only verify_evidence makes one."""

    identity: IdentityDocument
    quote: VerifiedQuote
    simulation: bool
    verdict: tuple[Rule, ...]
    # The TCB status that passed the policy: "Simulation" for simulated evidence.
    tcb: TcbStatus = SIMULATION_TCB
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _TOKEN:
            raise TypeError("VerifiedEnclave is made only by protocols.attestation.verify_evidence")

    @property
    def mrenclave(self) -> str:
        """The enclave's measurement: MRENCLAVE (SGX), or MRTD for a TDX quote."""
        if self.quote.tee == "TDX":
            return self.quote.td_report.mr_td.hex()
        return self.quote.report.mr_enclave.hex()

    @property
    def mrsigner(self) -> str:
        """MRSIGNER (SGX); a TDX quote has none, so this is empty."""
        if self.quote.tee == "TDX":
            return ""
        return self.quote.report.mr_signer.hex()


class EvidenceRefused(AttestationError):
    """Evidence failed one or more rules; ``verdict`` lists every rule."""

    def __init__(self, verdict: list[Rule]) -> None:
        self.verdict = tuple(verdict)
        failed = "; ".join(f"{r.name}: {r.detail}" for r in verdict if not r.passed)
        super().__init__(f"enclave evidence refused — {failed}")


@dataclass(frozen=True)
class QuoteAssessment:
    """What a quote alone shows: parsed fields, verification, TCB, and the quote-level rules.

    ``verdict`` holds the rules ``quote`` and ``tcb``, and with a policy also
    ``simulation``, ``measurement`` and ``debug``. ``verified`` is set only
    when the quote's chain and signatures verify.
    """

    quote: Quote | TdxQuote | None
    verified: VerifiedQuote | None
    simulation: bool
    tcb: TcbStatus | None
    verdict: tuple[Rule, ...]
    error: str | None = None  # why the quote did not parse, if it did not

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.verdict)


def _unix(moment: datetime | int) -> int:
    return int(moment.timestamp()) if isinstance(moment, datetime) else int(moment)


# --- what the evidence shows: checks that never raise, keeping why they failed --------


@dataclass(frozen=True)
class IdentityCheck:
    """An identity envelope, read: its verified document, or ``error`` saying why not.

    ``payload`` is set once the envelope parses, even if its signature fails:
    REPORTDATA is held against those bytes either way.
    """

    identity: IdentityDocument | None
    payload: bytes | None = None
    issued_at: int | None = None  # the document's signed time (Unix seconds), if any
    error: str = ""


def read_identity(envelope_bytes: bytes) -> IdentityCheck:
    """Parse an identity envelope and verify that it is signed by the key it names."""
    payload: bytes | None = None
    try:
        envelope = Envelope.from_bytes(envelope_bytes, "identity document")
        payload = envelope.payload
        doc = statements.verify(envelope, statements.IDENTITY, None, "identity document")
        identity = IdentityDocument.from_dict(doc)
        if identity.signing_key != envelope.signer:
            raise AttestationError("identity document is not signed by the key it names")
        issued_at = None
        if "issued_at" in doc:
            issued_at = canonical.field(doc, "issued_at", int, "identity document")
    except DetenteError as exc:
        return IdentityCheck(None, payload, error=str(exc))
    return IdentityCheck(identity, payload, issued_at)


@dataclass(frozen=True)
class QuoteCheck:
    """A quote, verified as far as it goes.

    ``quote`` is None if it does not parse, ``verified`` None if a check failed
    (``error`` says which). ``simulation``: its chain ends in a root other than
    Intel's; ``pinned``: the policy's simulation_roots name that root.
    """

    quote: Quote | TdxQuote | None
    verified: VerifiedQuote | None = None
    simulation: bool = False
    pinned: bool = False
    error: str = ""


def check_quote(
    data: bytes, simulation_roots: tuple[str, ...], chain_pem: str | None, now: datetime
) -> QuoteCheck:
    """Parse and verify a quote; trust the Intel root, and a simulation root only if pinned."""
    quote: Quote | TdxQuote | None = None
    simulation = pinned = False
    try:
        quote = parse_quote(data)
        chain_root = pck_chain(quote, chain_pem)[-1]
        intel = intel_sgx_root()
        root_fp = certificate_fingerprint(chain_root)
        simulation = root_fp != certificate_fingerprint(intel)
        pinned = simulation and root_fp in simulation_roots
        roots = [intel, chain_root] if pinned else [intel]
        verified = verify_quote(data, roots, now, pck_certificate_chain=chain_pem)
    except DetenteError as exc:
        return QuoteCheck(quote, None, simulation, pinned, str(exc))
    return QuoteCheck(quote, verified, simulation, pinned)


@dataclass(frozen=True)
class TcbCheck:
    """The platform's TCB status: from the collateral, or Simulation for a simulated quote.

    ``status`` is None when unknown: no verified hardware quote, no collateral,
    or collateral that does not verify (``error``). ``verified`` is the quote,
    with its TCB once the collateral verified.
    """

    verified: VerifiedQuote | None
    status: TcbStatus | None = None
    collateral: bool = False  # whether collateral was given
    error: str = ""


def check_tcb(quote: QuoteCheck, collateral: Collateral | None, now: datetime) -> TcbCheck:
    """Check a verified hardware quote's collateral with dcap-qvl (protocols.collateral)."""
    given = collateral is not None
    if quote.quote is not None and quote.simulation:
        return TcbCheck(quote.verified, TcbStatus(TCB_SIMULATION), given)
    if quote.verified is None or collateral is None:
        return TcbCheck(quote.verified, None, given)
    try:
        verified = check_collateral(quote.verified, collateral, now)
    except DetenteError as exc:
        return TcbCheck(quote.verified, None, given, str(exc))
    assert verified.tcb is not None  # set by check_collateral
    return TcbCheck(verified, verified.tcb, given)


# --- the rules, in verdict order: each judges one thing and returns its Rule ----------


def rule_identity(check: IdentityCheck) -> Rule:
    """identity: the identity document parses and is signed by the key it names."""
    if check.identity is None:
        return Rule("identity", False, check.error)
    return Rule("identity", True, f"enclave signing key {check.identity.signing_key.hex[:16]}…")


def rule_quote(check: QuoteCheck) -> Rule:
    """quote: the quote's chain ends in a trusted root, and its signatures verify."""
    if check.verified is not None:
        quote = check.verified.quote
        return Rule(
            "quote",
            True,
            f"{quote.tee} quote v{quote.version}: signature chain to the "
            + ("pinned SIMULATION root" if check.simulation else "Intel SGX Root CA")
            + ", QE report binding, QE report and "
            + ("ISV" if quote.tee == "SGX" else "TD")
            + " report signatures verify",
        )
    if check.quote is not None and check.simulation and not check.pinned:
        return Rule(
            "quote",
            False,
            f"{check.error}: a SIMULATION root; pin it in the policy's simulation_roots "
            "(and set allow_simulation = true) to accept simulation evidence",
        )
    return Rule("quote", False, check.error)


def rule_simulation(check: QuoteCheck, policy: AttestationPolicy) -> Rule:
    """simulation: simulated evidence passes only if the policy sets allow_simulation."""
    if check.quote is None:
        return Rule("simulation", False, "no parsable quote")
    if not check.simulation:
        return Rule("simulation", True, "hardware evidence")
    return Rule(
        "simulation",
        policy.allow_simulation,
        "SIMULATION evidence: no hardware protection; "
        + (
            "allowed by allow_simulation = true"
            if policy.allow_simulation
            else "refused (the policy does not set allow_simulation = true)"
        ),
    )


def rule_tcb(quote: QuoteCheck, tcb: TcbCheck, policy: AttestationPolicy | None) -> Rule:
    """tcb: the platform's TCB status is one the policy accepts (any, without a policy)."""
    if quote.quote is not None and quote.simulation:
        return Rule(
            "tcb",
            policy is None or policy.allow_simulation,
            "TCB status Simulation: a simulated platform has no Intel TCB or collateral"
            + ("; the collateral given was not used" if tcb.collateral else ""),
        )
    if quote.verified is None:
        return Rule("tcb", False, "not checked: the quote does not verify")
    if not tcb.collateral:
        return Rule(
            "tcb",
            policy is None,
            "not checked: no collateral given for this hardware quote"
            + (
                ""
                if policy is None
                else "; the policy needs the TCB status: fetch the quote's collateral (TCB "
                "info, QE identity, CRLs) from Intel PCS or a PCCS and pass it"
            ),
        )
    if tcb.status is None:
        return Rule("tcb", False, tcb.error)
    status = tcb.status.status
    advisories = (
        f"; advisories: {', '.join(tcb.status.advisory_ids)}" if tcb.status.advisory_ids else ""
    )
    if policy is None:
        return Rule("tcb", True, f"collateral verifies; TCB status {status}{advisories}")
    if status in policy.accept_tcb_status:
        how = "" if status == TCB_UP_TO_DATE else " (a relaxation the policy names)"
        return Rule("tcb", True, f"TCB status {status} accepted{how}{advisories}")
    return Rule(
        "tcb",
        False,
        f"TCB status {status} is not accepted (accept_tcb_status = "
        f"{list(policy.accept_tcb_status)}){advisories}; update the platform, or "
        f'add "{status}" to accept_tcb_status after reading the advisories',
    )


def rule_measurement(quote: Quote | TdxQuote | None, policy: AttestationPolicy) -> Rule:
    """measurement: MRENCLAVE, MRSIGNER with product and SVN, or (TDX) MRTD is pinned."""
    if quote is None:
        return Rule("measurement", False, "no parsable quote")
    if not isinstance(quote, Quote):
        mrtd = quote.td_report.mr_td.hex()
        return Rule(
            "measurement",
            mrtd in policy.mrtd,
            f"MRTD {mrtd} "
            + (
                "is allowed"
                if mrtd in policy.mrtd
                else "is not in the policy's mrtd"
                if policy.mrtd
                else "cannot match: the policy pins no mrtd (TDX)"
            ),
        )
    report = quote.report
    mrenclave, mrsigner = report.mr_enclave.hex(), report.mr_signer.hex()
    if policy.mrenclave:
        return Rule(
            "measurement",
            mrenclave in policy.mrenclave,
            f"MRENCLAVE {mrenclave} "
            + ("is allowed" if mrenclave in policy.mrenclave else "is not in the policy"),
        )
    if policy.mrsigner is None:
        return Rule("measurement", False, "an SGX quote, but the policy pins only TDX mrtd values")
    ok = (
        mrsigner == policy.mrsigner
        and report.isv_prod_id == policy.isv_prod_id
        and report.isv_svn >= policy.min_isv_svn
    )
    return Rule(
        "measurement",
        ok,
        f"MRSIGNER {mrsigner}, product {report.isv_prod_id}, SVN {report.isv_svn} "
        + ("match" if ok else "do not match")
        + f" the policy (MRSIGNER {policy.mrsigner}, product {policy.isv_prod_id}, "
        f"SVN ≥ {policy.min_isv_svn})",
    )


def rule_debug(quote: Quote | TdxQuote, policy: AttestationPolicy) -> Rule:
    """debug: a debug enclave or TD (memory readable by the host) passes only with allow_debug."""
    what = "enclave" if isinstance(quote, Quote) else "TD"
    if not quote.debug:
        return Rule("debug", True, f"production (non-debug) {what}")
    if policy.allow_debug:
        return Rule("debug", True, f"debug {what} (allowed)")
    return Rule("debug", False, f"debug {what} (refused: its memory is readable by the host)")


def rule_report_data(report_data: bytes, identity_payload: bytes | None, nonce: bytes) -> Rule:
    """report-data: the quote's REPORTDATA is SHA-256(identity payload) ‖ this party's nonce."""
    if identity_payload is None:
        return Rule("report-data", False, "no valid identity document to bind")
    try:
        expected = report_data_for(identity_payload, nonce)
    except AttestationError as exc:
        return Rule("report-data", False, str(exc))
    if report_data == expected:
        return Rule("report-data", True, "REPORTDATA binds the identity document and this nonce")
    return Rule(
        "report-data",
        False,
        "REPORTDATA does not match SHA-256(identity) ‖ nonce: "
        + (
            "wrong nonce (stale or replayed evidence)"
            if report_data[:32] == expected[:32]
            else "the identity document is not the one the quote attests"
        ),
    )


def rule_age(produced: int | None, now: datetime, policy: AttestationPolicy) -> Rule:
    """age: evidence produced at ``produced`` (Unix seconds) is within max_evidence_age_seconds."""
    max_age = policy.max_evidence_age_seconds
    if produced is None:
        return Rule(
            "age",
            True,
            "the evidence carries no time; its freshness rests on the nonce (max "
            f"{max_age} s applies to stored records)",
        )
    age = _unix(now) - produced
    if age < -CLOCK_SKEW_SECONDS:
        return Rule("age", False, f"the evidence is dated {-age} s in the future: check the clocks")
    fresh = age <= max_age
    return Rule(
        "age",
        fresh,
        f"evidence is {max(age, 0)} s old"
        + (
            f" (max_evidence_age_seconds = {max_age})"
            if fresh
            else f", older than max_evidence_age_seconds = {max_age}: "
            "attest again for fresh evidence"
        ),
    )


def assess_quote(
    data: bytes,
    policy: AttestationPolicy | None = None,
    *,
    collateral: Collateral | None = None,
    now: datetime | None = None,
) -> QuoteAssessment:
    """Verify a quote (and its collateral, if given) and apply the quote rules of ``policy``.

    Without a policy only the Intel root is trusted and any TCB status passes:
    the verdict then says whether the quote and collateral verify, not whether
    to trust the enclave.
    """
    now = now or datetime.now(UTC)
    chain_pem = collateral.pck_certificate_chain if collateral else None
    quote = check_quote(data, policy.simulation_roots if policy else (), chain_pem, now)
    tcb = check_tcb(quote, collateral, now)
    verdict = [rule_quote(quote)]
    if policy is not None:
        verdict.append(rule_simulation(quote, policy))
    verdict.append(rule_tcb(quote, tcb, policy))
    if policy is not None:
        verdict.append(rule_measurement(quote.quote, policy))
        if quote.quote is not None:
            verdict.append(rule_debug(quote.quote, policy))
    return QuoteAssessment(quote.quote, tcb.verified, quote.simulation, tcb.status, tuple(verdict))


def verify_evidence(
    evidence: Evidence,
    nonce: bytes,
    policy: AttestationPolicy,
    now: datetime | None = None,
    *,
    collateral: Collateral | None = None,
    evidence_time: datetime | int | None = None,
) -> VerifiedEnclave:
    """Check evidence against ``policy`` and the nonce this party sent.

    ``collateral`` is the hardware quote's collateral (needed for its TCB
    status; ignored for simulated quotes). ``evidence_time`` is when the
    evidence was produced, if the caller knows it (an RA-TLS certificate's
    start of validity, a stored record's time); without it, the identity
    document's signed ``issued_at`` (Unix seconds) is used if it has one. Either
    is held against ``max_evidence_age_seconds``.
    """
    now = now or datetime.now(UTC)
    identity = read_identity(evidence.identity)
    assessment = assess_quote(evidence.quote, policy, collateral=collateral, now=now)
    verdict = [rule_identity(identity), *assessment.verdict]
    if assessment.quote is not None:
        verdict.append(rule_report_data(assessment.quote.report_data, identity.payload, nonce))
    produced = _unix(evidence_time) if evidence_time is not None else identity.issued_at
    verdict.append(rule_age(produced, now, policy))

    verified, tcb = assessment.verified, assessment.tcb
    if (
        identity.identity is None
        or verified is None
        or tcb is None
        or not all(r.passed for r in verdict)
    ):
        raise EvidenceRefused(verdict)
    return VerifiedEnclave(
        identity.identity, verified, assessment.simulation, tuple(verdict), tcb, _token=_TOKEN
    )
