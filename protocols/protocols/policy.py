"""The attestation policy: which enclaves a party trusts, read from TOML and validated on load.

A policy pins enclaves by MRENCLAVE, by MRSIGNER with product and minimum SVN,
or (TDX) by MRTD. It is strict by default: no debug enclaves, no simulation
evidence, and only the ``UpToDate`` TCB status; every relaxation is named.
protocols.attestation holds evidence against it rule by rule.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocols.collateral import TCB_SIMULATION, TCB_STATUSES, TCB_UP_TO_DATE
from protocols.errors import PolicyError

_POLICY_KEYS = {
    "mrenclave": list,
    "mrsigner": str,
    "isv_prod_id": int,
    "min_isv_svn": int,
    "mrtd": list,
    "allow_debug": bool,
    "allow_simulation": bool,
    "simulation_roots": list,
    "accept_tcb_status": list,
    "max_evidence_age_seconds": int,
}

# Statuses a policy may name in accept_tcb_status: every Intel TCB status but
# Revoked (a revoked platform's keys may be in anyone's hands).
ACCEPTABLE_TCB_STATUSES = tuple(s for s in TCB_STATUSES if s != "Revoked")


@dataclass(frozen=True)
class AttestationPolicy:
    """Which enclaves a party trusts. Strict by default: no debug, no simulation, UpToDate TCB."""

    mrenclave: tuple[str, ...] = ()
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int = 0
    mrtd: tuple[str, ...] = ()  # TDX: allowed MRTD values (96 hex characters)
    allow_debug: bool = False
    allow_simulation: bool = False
    simulation_roots: tuple[str, ...] = ()
    # UpToDate is always accepted; every other status must be named here.
    accept_tcb_status: tuple[str, ...] = (TCB_UP_TO_DATE,)
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
        except UnicodeDecodeError:
            raise PolicyError(f"attestation policy {path} is not UTF-8 text") from None
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

        def hexes(key: str, size: int = 32) -> tuple[str, ...]:
            values = doc.get(key, [])
            for v in values:
                if not isinstance(v, str) or len(v) != 2 * size or not _is_hex(v):
                    raise PolicyError(
                        f"{source}: {key} entry {v!r} must be {2 * size} hex characters"
                    )
            return tuple(v.lower() for v in values)

        mrsigner = doc.get("mrsigner")
        if mrsigner is not None and (len(mrsigner) != 64 or not _is_hex(mrsigner)):
            raise PolicyError(f"{source}: mrsigner = {mrsigner!r} must be 64 hex characters")
        accepted = [TCB_UP_TO_DATE]
        for status in doc.get("accept_tcb_status", []):
            if status == "Revoked":
                raise PolicyError(
                    f"{source}: accept_tcb_status lists 'Revoked': a revoked platform can never "
                    "be accepted (its keys may be known to others)"
                )
            if status == TCB_SIMULATION:
                raise PolicyError(
                    f"{source}: accept_tcb_status lists 'Simulation': simulation is allowed by "
                    "allow_simulation = true, not by a TCB status"
                )
            if status not in ACCEPTABLE_TCB_STATUSES:
                raise PolicyError(
                    f"{source}: accept_tcb_status entry {status!r} is not a TCB status "
                    f"(known: {', '.join(ACCEPTABLE_TCB_STATUSES)})"
                )
            if status not in accepted:
                accepted.append(status)
        max_age = doc.get("max_evidence_age_seconds", 3600)
        if max_age <= 0:
            raise PolicyError(f"{source}: max_evidence_age_seconds = {max_age} must be positive")
        policy = cls(
            mrenclave=hexes("mrenclave"),
            mrsigner=mrsigner.lower() if mrsigner else None,
            isv_prod_id=doc.get("isv_prod_id"),
            min_isv_svn=doc.get("min_isv_svn", 0),
            mrtd=hexes("mrtd", 48),
            allow_debug=doc.get("allow_debug", False),
            allow_simulation=doc.get("allow_simulation", False),
            simulation_roots=hexes("simulation_roots"),
            accept_tcb_status=tuple(accepted),
            max_evidence_age_seconds=max_age,
        )
        if not policy.mrenclave and policy.mrsigner is None and not policy.mrtd:
            raise PolicyError(
                f'{source}: names no enclave: set mrenclave = ["…"] (from `detente libos '
                "measure`) or mrsigner with isv_prod_id (or mrtd for TDX)"
            )
        if policy.mrsigner is not None and policy.isv_prod_id is None:
            raise PolicyError(f"{source}: mrsigner needs isv_prod_id")
        return policy


def _is_hex(text: str) -> bool:
    # bytes.fromhex would also take whitespace: a pinned value has one spelling.
    return all(c in "0123456789abcdefABCDEF" for c in text)
