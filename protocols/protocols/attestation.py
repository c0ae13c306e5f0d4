"""Evidence and its verdict, rule by rule, under an attestation policy (DESIGN.md §3.2, §5).

Evidence is an enclave's identity document (a self-signed statement of its
HPKE, signing and TLS keys) plus a quote whose REPORTDATA is

    SHA-256(identity document payload bytes) ‖ nonce (32 bytes)

The verifier checks every rule of the policy (protocols.policy) and returns a
:class:`VerifiedEnclave` only when all pass; otherwise it raises
AttestationError carrying the whole verdict, rule by rule.

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
from collections.abc import Callable
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
    verdict: list[Rule] = []

    def rule(name: str, passed: bool, detail: str) -> None:
        verdict.append(Rule(name, passed, detail))

    quote: Quote | TdxQuote | None = None
    verified: VerifiedQuote | None = None
    simulation = False
    root_fp = ""
    chain_pem = collateral.pck_certificate_chain if collateral else None
    simulation_roots = policy.simulation_roots if policy else ()
    try:
        quote = parse_quote(data)
        chain_root = pck_chain(quote, chain_pem)[-1]
        intel = intel_sgx_root()
        root_fp = certificate_fingerprint(chain_root)
        simulation = root_fp != certificate_fingerprint(intel)
        roots = [intel]
        if simulation and root_fp in simulation_roots:
            roots.append(chain_root)
        verified = verify_quote(data, roots, now, pck_certificate_chain=chain_pem)
        rule(
            "quote",
            True,
            f"{quote.tee} quote v{quote.version}: signature chain to the "
            + ("pinned SIMULATION root" if simulation else "Intel SGX Root CA")
            + ", QE report binding, QE report and "
            + ("ISV" if quote.tee == "SGX" else "TD")
            + " report signatures verify",
        )
    except DetenteError as exc:
        if quote is not None and simulation and root_fp not in simulation_roots:
            rule(
                "quote",
                False,
                f"{exc}: a SIMULATION root; pin it in the policy's simulation_roots "
                "(and set allow_simulation = true) to accept simulation evidence",
            )
        else:
            rule("quote", False, str(exc))

    if policy is not None:
        if quote is None:
            rule("simulation", False, "no parsable quote")
        elif not simulation:
            rule("simulation", True, "hardware evidence")
        else:
            rule(
                "simulation",
                policy.allow_simulation,
                "SIMULATION evidence: no hardware protection; "
                + (
                    "allowed by allow_simulation = true"
                    if policy.allow_simulation
                    else "refused (the policy does not set allow_simulation = true)"
                ),
            )

    tcb: TcbStatus | None = None
    if quote is not None and simulation:
        tcb = TcbStatus(TCB_SIMULATION)
        rule(
            "tcb",
            policy is None or policy.allow_simulation,
            "TCB status Simulation: a simulated platform has no Intel TCB or collateral"
            + ("; the collateral given was not used" if collateral else ""),
        )
    elif verified is None:
        rule("tcb", False, "not checked: the quote does not verify")
    elif collateral is None:
        rule(
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
    else:
        try:
            verified = check_collateral(verified, collateral, now)
            assert verified.tcb is not None  # set by check_collateral
            tcb = verified.tcb
            advisories = f"; advisories: {', '.join(tcb.advisory_ids)}" if tcb.advisory_ids else ""
            if policy is None:
                rule("tcb", True, f"collateral verifies; TCB status {tcb.status}{advisories}")
            elif tcb.status in policy.accept_tcb_status:
                how = "" if tcb.status == TCB_UP_TO_DATE else " (a relaxation the policy names)"
                rule("tcb", True, f"TCB status {tcb.status} accepted{how}{advisories}")
            else:
                rule(
                    "tcb",
                    False,
                    f"TCB status {tcb.status} is not accepted (accept_tcb_status = "
                    f"{list(policy.accept_tcb_status)}){advisories}; update the platform, or "
                    f'add "{tcb.status}" to accept_tcb_status after reading the advisories',
                )
        except DetenteError as exc:
            rule("tcb", False, str(exc))

    if policy is not None and quote is not None:
        _measurement_rules(quote, policy, rule)
    elif policy is not None:
        rule("measurement", False, "no parsable quote")

    return QuoteAssessment(quote, verified, simulation, tcb, tuple(verdict))


def _measurement_rules(
    quote: Quote | TdxQuote, policy: AttestationPolicy, rule: Callable[[str, bool, str], None]
) -> None:
    if isinstance(quote, Quote):
        report = quote.report
        mrenclave, mrsigner = report.mr_enclave.hex(), report.mr_signer.hex()
        if policy.mrenclave:
            rule(
                "measurement",
                mrenclave in policy.mrenclave,
                f"MRENCLAVE {mrenclave} "
                + ("is allowed" if mrenclave in policy.mrenclave else "is not in the policy"),
            )
        elif policy.mrsigner is not None:
            ok = (
                mrsigner == policy.mrsigner
                and report.isv_prod_id == policy.isv_prod_id
                and report.isv_svn >= policy.min_isv_svn
            )
            rule(
                "measurement",
                ok,
                f"MRSIGNER {mrsigner}, product {report.isv_prod_id}, SVN {report.isv_svn} "
                + ("match" if ok else "do not match")
                + f" the policy (MRSIGNER {policy.mrsigner}, product {policy.isv_prod_id}, "
                f"SVN ≥ {policy.min_isv_svn})",
            )
        else:
            rule("measurement", False, "an SGX quote, but the policy pins only TDX mrtd values")
        debug_what = "debug enclave"
    else:
        mrtd = quote.td_report.mr_td.hex()
        rule(
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
        debug_what = "debug TD"
    refused = quote.debug and not policy.allow_debug
    rule(
        "debug",
        not refused,
        (
            debug_what
            + (" (refused: its memory is readable by the host)" if refused else " (allowed)")
        )
        if quote.debug
        else "production (non-debug) " + ("enclave" if isinstance(quote, Quote) else "TD"),
    )


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
    verdict: list[Rule] = []

    def rule(name: str, passed: bool, detail: str) -> None:
        verdict.append(Rule(name, passed, detail))

    identity: IdentityDocument | None = None
    envelope: Envelope | None = None
    issued_at: int | None = None
    try:
        envelope = Envelope.from_bytes(evidence.identity, "identity document")
        doc = statements.verify(envelope, statements.IDENTITY, None, "identity document")
        identity = IdentityDocument.from_dict(doc)
        if identity.signing_key != envelope.signer:
            raise AttestationError("identity document is not signed by the key it names")
        if "issued_at" in doc:
            issued_at = canonical.field(doc, "issued_at", int, "identity document")
        rule("identity", True, f"enclave signing key {identity.signing_key.hex[:16]}…")
    except DetenteError as exc:
        rule("identity", False, str(exc))

    assessment = assess_quote(evidence.quote, policy, collateral=collateral, now=now)
    verdict.extend(assessment.verdict)

    if assessment.quote is not None:
        report_data = assessment.quote.report_data
        if envelope is not None:
            try:
                expected = report_data_for(envelope.payload, nonce)
                bound = report_data == expected
                rule(
                    "report-data",
                    bound,
                    "REPORTDATA binds the identity document and this nonce"
                    if bound
                    else (
                        "REPORTDATA does not match SHA-256(identity) ‖ nonce: "
                        + (
                            "wrong nonce (stale or replayed evidence)"
                            if report_data[:32] == expected[:32]
                            else "the identity document is not the one the quote attests"
                        )
                    ),
                )
            except AttestationError as exc:
                rule("report-data", False, str(exc))
        else:
            rule("report-data", False, "no valid identity document to bind")

    produced = _unix(evidence_time) if evidence_time is not None else issued_at
    if produced is None:
        rule(
            "age",
            True,
            "the evidence carries no time; its freshness rests on the nonce (max "
            f"{policy.max_evidence_age_seconds} s applies to stored records)",
        )
    else:
        age = _unix(now) - produced
        if age < -CLOCK_SKEW_SECONDS:
            rule("age", False, f"the evidence is dated {-age} s in the future: check the clocks")
        else:
            fresh = age <= policy.max_evidence_age_seconds
            rule(
                "age",
                fresh,
                f"evidence is {max(age, 0)} s old"
                + (
                    f" (max_evidence_age_seconds = {policy.max_evidence_age_seconds})"
                    if fresh
                    else f", older than max_evidence_age_seconds = "
                    f"{policy.max_evidence_age_seconds}: attest again for fresh evidence"
                ),
            )

    verified, tcb = assessment.verified, assessment.tcb
    if identity is None or verified is None or tcb is None or not all(r.passed for r in verdict):
        raise EvidenceRefused(verdict)
    return VerifiedEnclave(
        identity, verified, assessment.simulation, tuple(verdict), tcb, _token=_TOKEN
    )
