"""Evidence, attestation policy and the verdict (DESIGN.md §3.2, §5).

Evidence is an enclave's identity document (a self-signed statement of its
HPKE, signing and TLS keys) plus a quote whose REPORTDATA is

    SHA-256(identity document payload bytes) ‖ nonce (32 bytes)

The verifier checks every rule of the policy and returns a
:class:`VerifiedEnclave` only when all pass; otherwise it raises
AttestationError carrying the whole verdict, rule by rule.

Simulation evidence (a quote whose chain ends in a simulation root) gives NO
hardware protection: it is refused unless the policy says
``allow_simulation = true`` and pins that simulation root.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from protocols import statements
from protocols.documents import IdentityDocument
from protocols.errors import AttestationError, DetenteError, PolicyError
from protocols.quote import (
    Quote,
    VerifiedQuote,
    certificate_fingerprint,
    intel_sgx_root,
    pck_chain,
    verify_quote,
)
from protocols.statements import Envelope

NONCE_SIZE = 32


def report_data_for(identity_payload: bytes, nonce: bytes) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise AttestationError(f"attestation nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    return hashlib.sha256(identity_payload).digest() + nonce


@dataclass(frozen=True)
class Evidence:
    identity: bytes  # DSSE envelope bytes of the identity document
    quote: bytes
    backend: str


_POLICY_KEYS = {
    "mrenclave": list,
    "mrsigner": str,
    "isv_prod_id": int,
    "min_isv_svn": int,
    "allow_debug": bool,
    "allow_simulation": bool,
    "simulation_roots": list,
    "max_evidence_age_seconds": int,
}


@dataclass(frozen=True)
class AttestationPolicy:
    """Which enclaves a party trusts. Strict by default: no debug, no simulation."""

    mrenclave: tuple[str, ...] = ()
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int = 0
    allow_debug: bool = False
    allow_simulation: bool = False
    simulation_roots: tuple[str, ...] = ()
    max_evidence_age_seconds: int = 3600

    @classmethod
    def from_toml(cls, text: str, source: str = "policy") -> AttestationPolicy:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{source} is not valid TOML: {exc}") from None
        return cls.from_dict(doc, source)

    @classmethod
    def load(cls, path: Path) -> AttestationPolicy:
        try:
            text = path.read_text()
        except OSError as exc:
            raise PolicyError(f"cannot read attestation policy {path}: {exc.strerror}") from None
        return cls.from_toml(text, str(path))

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "policy") -> AttestationPolicy:
        for key, value in doc.items():
            kind = _POLICY_KEYS.get(key)
            if kind is None:
                raise PolicyError(
                    f"{source}: unknown key {key!r} (known: {', '.join(sorted(_POLICY_KEYS))})"
                )
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise PolicyError(f"{source}: {key} = {value!r} must be {kind.__name__}")

        def hexes(key: str) -> tuple[str, ...]:
            values = doc.get(key, [])
            for v in values:
                if not isinstance(v, str) or len(v) != 64 or not _is_hex(v):
                    raise PolicyError(f"{source}: {key} entry {v!r} must be 64 hex characters")
            return tuple(v.lower() for v in values)

        mrsigner = doc.get("mrsigner")
        if mrsigner is not None and (len(mrsigner) != 64 or not _is_hex(mrsigner)):
            raise PolicyError(f"{source}: mrsigner = {mrsigner!r} must be 64 hex characters")
        policy = cls(
            mrenclave=hexes("mrenclave"),
            mrsigner=mrsigner.lower() if mrsigner else None,
            isv_prod_id=doc.get("isv_prod_id"),
            min_isv_svn=doc.get("min_isv_svn", 0),
            allow_debug=doc.get("allow_debug", False),
            allow_simulation=doc.get("allow_simulation", False),
            simulation_roots=hexes("simulation_roots"),
            max_evidence_age_seconds=doc.get("max_evidence_age_seconds", 3600),
        )
        if not policy.mrenclave and policy.mrsigner is None:
            raise PolicyError(
                f'{source}: names no enclave: set mrenclave = ["…"] (from `detente libos '
                "measure`) or mrsigner with isv_prod_id"
            )
        if policy.mrsigner is not None and policy.isv_prod_id is None:
            raise PolicyError(f"{source}: mrsigner needs isv_prod_id")
        return policy


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Rule:
    name: str
    passed: bool
    detail: str


_TOKEN = object()


@dataclass(frozen=True)
class VerifiedEnclave:
    """An enclave whose evidence passed every policy rule. Only verify_evidence makes one."""

    identity: IdentityDocument
    quote: VerifiedQuote
    simulation: bool
    verdict: tuple[Rule, ...]
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _TOKEN:
            raise TypeError("VerifiedEnclave is made only by protocols.attestation.verify_evidence")

    @property
    def mrenclave(self) -> str:
        return self.quote.report.mr_enclave.hex()

    @property
    def mrsigner(self) -> str:
        return self.quote.report.mr_signer.hex()


class EvidenceRefused(AttestationError):
    """Evidence failed one or more rules; ``verdict`` lists every rule."""

    def __init__(self, verdict: list[Rule]) -> None:
        self.verdict = tuple(verdict)
        failed = "; ".join(f"{r.name}: {r.detail}" for r in verdict if not r.passed)
        super().__init__(f"enclave evidence refused — {failed}")


def verify_evidence(
    evidence: Evidence, nonce: bytes, policy: AttestationPolicy, now: datetime | None = None
) -> VerifiedEnclave:
    """Check evidence against ``policy`` and the nonce this party sent."""
    verdict: list[Rule] = []

    def rule(name: str, passed: bool, detail: str) -> None:
        verdict.append(Rule(name, passed, detail))

    identity: IdentityDocument | None = None
    envelope: Envelope | None = None
    try:
        envelope = Envelope.from_bytes(evidence.identity, "identity document")
        doc = statements.verify(envelope, statements.IDENTITY, None, "identity document")
        identity = IdentityDocument.from_dict(doc)
        if identity.signing_key != envelope.signer:
            raise AttestationError("identity document is not signed by the key it names")
        rule("identity", True, f"enclave signing key {identity.signing_key.hex[:16]}…")
    except DetenteError as exc:
        rule("identity", False, str(exc))

    verified: VerifiedQuote | None = None
    quote: Quote | None = None
    simulation = False
    try:
        quote = Quote.from_bytes(evidence.quote)
        chain_root = pck_chain(quote)[-1]
        intel = intel_sgx_root()
        root_fp = certificate_fingerprint(chain_root)
        simulation = root_fp != certificate_fingerprint(intel)
        roots = [intel]
        if simulation and root_fp in policy.simulation_roots:
            roots.append(chain_root)
        verified = verify_quote(evidence.quote, roots, now)
        rule(
            "quote",
            True,
            "signature chain to the "
            + ("pinned SIMULATION root" if simulation else "Intel SGX Root CA")
            + ", QE report and ISV report signatures verify",
        )
    except DetenteError as exc:
        if quote is not None and simulation and not policy.simulation_roots:
            rule("quote", False, f"{exc}; pin the simulation root in simulation_roots")
        else:
            rule("quote", False, str(exc))

    if simulation:
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
    else:
        rule("simulation", True, "hardware evidence")

    if quote is not None:
        report = quote.report
        mrenclave, mrsigner = report.mr_enclave.hex(), report.mr_signer.hex()
        if policy.mrenclave:
            rule(
                "measurement",
                mrenclave in policy.mrenclave,
                f"MRENCLAVE {mrenclave} "
                + ("is allowed" if mrenclave in policy.mrenclave else "is not in the policy"),
            )
        else:
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
        rule(
            "debug",
            not report.debug or policy.allow_debug,
            "debug enclave"
            + (
                " (refused: its memory is readable by the host)"
                if report.debug and not policy.allow_debug
                else ""
            )
            if report.debug
            else "production (non-debug) enclave",
        )
        if envelope is not None:
            try:
                expected = report_data_for(envelope.payload, nonce)
                bound = report.report_data == expected
                rule(
                    "report-data",
                    bound,
                    "REPORTDATA binds the identity document and this nonce"
                    if bound
                    else (
                        "REPORTDATA does not match SHA-256(identity) ‖ nonce: "
                        + (
                            "wrong nonce (stale or replayed evidence)"
                            if report.report_data[:32] == expected[:32]
                            else "the identity document is not the one the quote attests"
                        )
                    ),
                )
            except AttestationError as exc:
                rule("report-data", False, str(exc))
        else:
            rule("report-data", False, "no valid identity document to bind")
    else:
        rule("measurement", False, "no parsable quote")

    if identity is None or verified is None or not all(r.passed for r in verdict):
        raise EvidenceRefused(verdict)
    return VerifiedEnclave(identity, verified, simulation, tuple(verdict), _token=_TOKEN)
