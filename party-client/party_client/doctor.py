"""`detente party doctor`: is this party ready to work, and if not, what to fix.

Each check says ``ok``, ``fail`` (with what to do) or ``skipped`` (a check it
needs failed first), in the order a party is set up: the home folder and its
files, the keys, the coordinator (reachable, presenting the pinned
certificate, this party registered), the clocks, the enclave under this
party's policy, the coordinator's audit log. Nothing is changed but the audit
head this party verified (as `detente party audit` does): the enclave is
attested afresh without replacing the record `detente party attest` keeps.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from party_client.home import PartyHome
from protocols.errors import DetenteError
from protocols.request_auth import WINDOW_SECONDS

OK, FAIL, SKIPPED = "ok", "fail", "skipped"
# A clock further off than this fails: the coordinator refuses signed requests at
# WINDOW_SECONDS, and attestation evidence and job terms carry times too.
MAX_SKEW_SECONDS = 60


@dataclass(frozen=True)
class Check:
    """One check: its ``name``, ``status`` (ok, fail, skipped), what was found
    (``detail``) and, unless ok, what to do (``fix``)."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Diagnosis:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


class _Failed(Exception):
    """A check failed: its detail and fix."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail, self.fix = detail, fix


def diagnose(home: PartyHome, policy_path: Path | None = None) -> Diagnosis:
    """Run every check against ``home`` (and ``policy_path`` instead of its policy)."""
    doctor = _Doctor(home, policy_path)
    try:
        return doctor.run()
    finally:
        doctor.close()


class _Doctor:
    def __init__(self, home: PartyHome, policy_path: Path | None) -> None:
        self.home = home
        self.policy_path = policy_path or home.policy_path
        self.checks: list[Check] = []
        self.remote: Any = None  # party_client.remote.Coordinator once connected

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()

    def check(self, name: str, needs: list[str], fn: Callable[[], str]) -> None:
        failed = [c.name for c in self.checks if c.name in needs and c.status != OK]
        if failed:
            self.checks.append(Check(name, SKIPPED, f"needs {', '.join(failed)} to pass first"))
            return
        try:
            self.checks.append(Check(name, OK, fn()))
        except _Failed as exc:
            self.checks.append(Check(name, FAIL, exc.detail, exc.fix))
        except DetenteError as exc:
            self.checks.append(Check(name, FAIL, str(exc), "see the message"))
        except OSError as exc:  # a file that cannot be read (a folder, a dead link, …)
            where = f" {exc.filename}" if exc.filename else ""
            self.checks.append(
                Check(name, FAIL, f"cannot read{where}: {exc.strerror}", "fix or recreate it")
            )

    def run(self) -> Diagnosis:
        self.check("config", [], self.config)
        self.check("keys", ["config"], self.keys)
        self.check("policy", ["config"], self.policy)
        self.check("coordinator", ["config", "keys"], self.coordinator)
        self.check("certificate", ["config"], self.certificate)
        self.check("registration", ["coordinator"], self.registration)
        # A refusal carries the coordinator's clock too: a clock far off is the usual cause.
        self.check("clock", [] if self._clocked() else ["coordinator"], self.clock)
        self.check("attestation", ["coordinator", "policy"], self.attestation)
        self.check("audit", ["coordinator"], self.audit)
        return Diagnosis(self.checks)

    # -- the home ---------------------------------------------------------------

    def config(self) -> str:
        root = self.home.root
        if not root.is_dir():
            raise _Failed(f"no folder {root}", "run `detente party init` (or set DETENTE_HOME)")
        if not os.access(root, os.R_OK | os.X_OK):
            raise _Failed(f"{root} is not readable by you", f"run `chmod u+rx {root}`")
        if stat.S_IMODE(root.stat().st_mode) & 0o022:
            raise _Failed(
                f"{root} is writable by others: they could replace its keys or pins",
                f"run `chmod go-w {root}`",
            )
        config = self.home.config()
        missing = [
            str(p.relative_to(root))
            for p in (self.home.coordinator_cert_path, root / "keys" / "signing.key")
            if not p.exists()
        ]
        if missing:
            raise _Failed(
                f"{', '.join(missing)} missing from {root}",
                "run `detente party init --coordinator-cert FILE` again",
            )
        return f"{root}: party {config['name']!r}, coordinator {config['coordinator']}"

    def keys(self) -> str:
        from party_client import keyfile

        found = []
        for name in ("signing.key", "hpke.key"):
            path = self.home.root / "keys" / name
            if not path.exists():
                raise _Failed(f"no key {path}", "run `detente party init` again")
            if not os.access(path, os.R_OK):
                raise _Failed(f"{path} is not readable by you", f"run `chmod 600 {path}`")
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                raise _Failed(f"{path} is readable by others", f"run `chmod 600 {path}`")
            found.append(keyfile.is_encrypted(path.read_bytes()))
        encrypted = any(found)
        if encrypted and self.home.passphrase is None and keyfile.PASSPHRASE_ENV not in os.environ:
            import sys

            if not sys.stdin.isatty():
                raise _Failed(
                    "the keys are encrypted under a passphrase, and none is given",
                    f"set {keyfile.PASSPHRASE_ENV}, or run on a terminal to be asked",
                )
        try:
            key = self.home.signing_key()
            self.home.hpke_key()
        except keyfile.WrongPassphrase:
            raise _Failed(
                "the passphrase does not open the keys",
                f"set {keyfile.PASSPHRASE_ENV} to the passphrase given at `detente party init`",
            ) from None
        how = "encrypted under your passphrase" if encrypted else "not encrypted (mode 0600)"
        return f"signing key {key.verify_key.hex[:16]}… and HPKE key load; {how}"

    def policy(self) -> str:
        policy = self.home.policy(self.policy_path)
        allowed = ", ".join(m[:16] + "…" for m in policy.mrenclave) or "(by signer)"
        sim = "; allows SIMULATION enclaves" if policy.allow_simulation else ""
        return f"{self.policy_path}: enclave measurement(s) {allowed}{sim}"

    # -- the coordinator ----------------------------------------------------------

    def coordinator(self) -> str:
        from party_client.remote import Coordinator

        self.remote = Coordinator.for_home(self.home, timeout=10.0)
        try:
            self.parties = self.remote.parties()
        except DetenteError as exc:
            raise _Failed(str(exc), _coordinator_fix(exc)) from None
        return f"{self.remote.address} answers over TLS pinned to its certificate"

    def certificate(self) -> str:
        from protocols import tls

        pinned = self.home.coordinator_certificate()
        address = self.home.config()["coordinator"]
        try:
            presented = tls.peer_certificate(address, 5.0)
        except (OSError, DetenteError) as exc:
            raise _Failed(
                f"cannot reach {address} to see its certificate ({exc})",
                "start the coordinator, or correct its address with `detente party init`",
            ) from None
        sha = tls.certificate_sha256(pinned)
        if presented != tls.certificate_der(pinned):
            raise _Failed(
                f"{address} presents another certificate than the one pinned (SHA-256 {sha[:16]}…)",
                "do not go on unless the coordinator's operator confirms a new certificate; "
                "then pin it with `detente party init --coordinator-cert FILE`",
            )
        return f"{address} presents the pinned certificate (SHA-256 {sha[:16]}…)"

    def registration(self) -> str:
        name = self.home.config()["name"]
        me = self.home.signing_key().verify_key.hex
        mine = [p for p in self.parties if p.signing_key == me]
        if not mine:
            raise _Failed(
                "the coordinator lists no registration for your key",
                "run `detente party init` again with an --enrollment-token from its operator",
            )
        if mine[0].name != name:
            raise _Failed(
                f"the coordinator lists your key as {mine[0].name!r}, not {name!r}",
                "ask the coordinator's operator",
            )
        return f"registered as {name!r}"

    def _clocked(self) -> bool:
        return self.remote is not None and self.remote.last_clock is not None

    def clock_check(self) -> Check:
        assert self.remote is not None and self.remote.last_clock is not None
        theirs, mine = self.remote.last_clock
        skew = (mine - theirs) / 1000
        ahead = "ahead of" if skew > 0 else "behind"
        detail = f"your clock is {abs(skew):.1f} s {ahead} the coordinator's"
        if abs(skew) > MAX_SKEW_SECONDS:
            return Check(
                "clock",
                FAIL,
                detail,
                f"set your clock (NTP): the coordinator refuses requests more than "
                f"{WINDOW_SECONDS} s off, and times in evidence and terms must agree",
            )
        return Check("clock", OK, detail)

    def clock(self) -> str:
        check = self.clock_check()
        if check.status != OK:
            raise _Failed(check.detail, check.fix)
        return check.detail

    def attestation(self) -> str:
        from protocols.attestation import Evidence, EvidenceRefused, verify_evidence

        policy = self.home.policy(self.policy_path)
        nonce = secrets.token_bytes(32)
        reply = self.remote.evidence(nonce)
        try:
            enclave = verify_evidence(
                Evidence(reply.identity, reply.quote, reply.backend), nonce, policy
            )
        except EvidenceRefused as exc:
            rules = "; ".join(f"rule {r.name!r}: {r.detail}" for r in exc.verdict if not r.passed)
            raise _Failed(
                f"the enclave fails your policy {self.policy_path}, {rules}",
                "do not upload to this enclave; if its new measurement is one you trust, "
                "update your policy, then `detente party attest`",
            ) from None
        sim = " (SIMULATION: no hardware protection)" if enclave.simulation else ""
        return f"the enclave {enclave.mrenclave[:16]}… passes every rule of your policy{sim}"

    def audit(self) -> str:
        from party_client.audit import memory_for, verify_extension

        memory = memory_for(self.home.root, self.home.coordinator_certificate())
        report = verify_extension(self.remote, memory, lambda: self.remote.last_head)
        return (
            f"entries {report.verified_from}..{report.verified_to} chain to the coordinator's "
            "signed head"
        )


def _coordinator_fix(exc: DetenteError) -> str:
    import grpc

    code = getattr(exc, "code", None)
    if code == grpc.StatusCode.UNAVAILABLE:
        return (
            "start the coordinator, or correct its address with `detente party init`; if the "
            "certificate check fails too, see it"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return "see the clock and registration checks: the coordinator refused your signature"
    return "see the message"
