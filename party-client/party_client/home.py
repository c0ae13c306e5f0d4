"""A party's home folder: keys, config, attestation record, data set records.

``DETENTE_HOME`` or ``~/.config/detente`` (docs/architecture.md, state). Keys are files of
mode 0600; nothing here is ever sent anywhere except public keys.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from party_client.pins import KnownParties
from protocols import canonical
from protocols.durable import write_atomic
from protocols.errors import PolicyError, SetupError
from protocols.keys import HpkePrivateKey, Kem, SigningKey, VerifyKey, write_secret_file

if TYPE_CHECKING:
    from cryptography import x509

    from protocols.attestation import Evidence, VerifiedEnclave
    from protocols.policy import AttestationPolicy

# protocols.tls (gRPC, X.509), protocols.attestation and protocols.policy (quotes and their
# collateral) are imported by the methods that use them: a command that only follows a job
# does not pay for quote verification.


def home_dir() -> Path:
    env = os.environ.get("DETENTE_HOME")
    return Path(env) if env else Path.home() / ".config" / "detente"


@dataclass
class PartyHome:
    """The folder of one party. ``passphrase`` opens keys encrypted under one
    (:mod:`party_client.keyfile`); without it, ``DETENTE_PASSPHRASE`` or a prompt on a
    terminal does."""

    root: Path
    passphrase: str | None = field(default=None, repr=False, compare=False)
    # Keys opened once per object: scrypt is deliberately slow.
    _opened: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def default(cls) -> PartyHome:
        return cls(home_dir())

    @property
    def config_path(self) -> Path:
        return self.root / "party.toml"

    @property
    def policy_path(self) -> Path:
        return self.root / "policy.toml"

    @property
    def record_path(self) -> Path:
        return self.root / "attestation.json"

    @property
    def coordinator_cert_path(self) -> Path:
        return self.root / "coordinator.crt"

    @property
    def known_parties(self) -> KnownParties:
        """The fingerprint pinned for each party name (party_client.pins)."""
        return KnownParties(self.root / "known-parties.json")

    # -- the coordinator's pinned TLS certificate -------------------------------

    def pin_coordinator_certificate(self, source: Path) -> x509.Certificate:
        """Copy the coordinator's certificate (as `detente coordinator serve` printed it)."""
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise SetupError(
                f"cannot read the coordinator certificate {source}: {exc.strerror}"
            ) from None
        from protocols import tls

        cert = tls.load_certificate(data, f"coordinator certificate {source}")
        write_atomic(self.coordinator_cert_path, tls.certificate_pem(cert))
        return cert

    def coordinator_certificate(self) -> x509.Certificate:
        """The pinned certificate: the party's channel accepts this one and no other."""
        path = self.coordinator_cert_path
        if not path.exists():
            raise SetupError(
                f"no pinned coordinator certificate in {self.root}: run `detente party init "
                "--coordinator-cert FILE` with the certificate `detente coordinator serve` printed"
            )
        from protocols import tls

        return tls.load_certificate(path.read_bytes(), str(path))

    # -- identity -------------------------------------------------------------

    def create_identity(
        self,
        name: str,
        coordinator: str,
        pq: bool = False,
        *,
        passphrase: str | None = None,
        signing_key: SigningKey | None = None,
    ) -> None:
        """Create keys once; re-running with the same name only updates the coordinator.

        ``pq`` makes the HPKE key ML-KEM-768+X25519 (post-quantum) instead of
        X25519; the key file's encoding records the choice (protocols/SPEC.md §4.1).
        ``passphrase`` writes the keys encrypted under it (an existing identity's
        keys are encrypted in place); ``signing_key`` is an existing key to sign
        with instead of a new one (first creation only).
        """
        keys = self.root / "keys"
        if (keys / "signing.key").exists():
            if signing_key is not None and signing_key.verify_key != self.signing_key().verify_key:
                raise SetupError(
                    f"{self.root} already holds another signing key: a party's key is chosen "
                    "when it is created; use another DETENTE_HOME for a party with this key"
                )
            if passphrase is not None:
                self.encrypt_keys(passphrase)
            existing = self.config()["name"]
            if existing != name:
                raise SetupError(
                    f"{self.root} already holds the identity of {existing!r}; use another "
                    "DETENTE_HOME for a new party"
                )
            if pq and self.hpke_key().kem is not Kem.MLKEM768_X25519:
                raise SetupError(
                    f"{self.root} already holds an X25519 HPKE key: a party chooses --pq when "
                    "it is created; use another DETENTE_HOME for a post-quantum party"
                )
            self.save_config(name, coordinator)
            return
        kem = Kem.MLKEM768_X25519 if pq else Kem.X25519
        signing = signing_key or SigningKey.generate()
        self._write_secret("signing.key", signing.private_raw(), passphrase)
        self._write_secret("hpke.key", HpkePrivateKey.generate(kem).private_raw(), passphrase)
        self.save_config(name, coordinator)

    def _write_secret(self, name: str, raw: bytes, passphrase: str | None) -> None:
        from party_client import keyfile

        data = raw if passphrase is None else keyfile.seal_key(raw, passphrase, name)
        write_secret_file(self.root / "keys" / name, data)
        self._opened[name] = raw
        if passphrase is not None:
            self.passphrase = passphrase

    def encrypt_keys(self, passphrase: str) -> None:
        """Rewrite this party's keys encrypted under ``passphrase`` (read with the current
        one if they are encrypted already)."""
        raws = {name: self._secret(name) for name in ("signing.key", "hpke.key")}
        for name, raw in raws.items():
            self._write_secret(name, raw, passphrase)

    @property
    def keys_encrypted(self) -> bool:
        from party_client import keyfile

        path = self.root / "keys" / "signing.key"
        return path.exists() and keyfile.is_encrypted(path.read_bytes())

    def save_config(self, name: str, coordinator: str) -> None:
        text = (
            "# Detente party configuration (written by `detente party init`)\n"
            f"name = {json.dumps(name)}\ncoordinator = {json.dumps(coordinator)}\n"
        )
        write_atomic(self.config_path, text.encode())

    def config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            raise SetupError(f"no party identity in {self.root}: run `detente party init` first")
        try:
            doc = tomllib.loads(self.config_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{self.config_path} is not valid TOML: {exc}") from None
        for key in ("name", "coordinator"):
            if not isinstance(doc.get(key), str):
                raise PolicyError(f"{self.config_path}: {key} must be a string")
        return doc

    def signing_key(self) -> SigningKey:
        return SigningKey.from_raw(self._secret("signing.key"))

    def hpke_key(self) -> HpkePrivateKey:
        return HpkePrivateKey.from_raw(self._secret("hpke.key"))

    def _secret(self, name: str) -> bytes:
        path = self.root / "keys" / name
        if not path.exists():
            raise SetupError(f"no key {path}: run `detente party init` first")
        if path.stat().st_mode & 0o077:
            raise SetupError(f"{path} is readable by others: run `chmod 600 {path}`")
        data = path.read_bytes()
        from party_client import keyfile

        if not keyfile.is_encrypted(data):
            return data
        if name not in self._opened:
            try:
                self._opened[name] = keyfile.open_key(data, self._passphrase(path), name, str(path))
            except keyfile.WrongPassphrase:
                self.passphrase = None  # a prompt asks again next time
                raise
        return self._opened[name]

    def _passphrase(self, path: Path) -> str:
        """The passphrase given, else ``DETENTE_PASSPHRASE``, else asked on a terminal."""
        from party_client.keyfile import PASSPHRASE_ENV

        if self.passphrase is None:
            self.passphrase = os.environ.get(PASSPHRASE_ENV)
        if self.passphrase is None:
            import sys

            if not sys.stdin.isatty():
                raise SetupError(
                    f"{path} is encrypted under a passphrase: set {PASSPHRASE_ENV}, or run "
                    "on a terminal to be asked for it"
                )
            import getpass

            self.passphrase = getpass.getpass(f"passphrase for {self.root / 'keys'}: ")
        return self.passphrase

    # -- attestation ----------------------------------------------------------

    def policy(self, override: Path | None = None) -> AttestationPolicy:
        from protocols.policy import AttestationPolicy

        path = override or self.policy_path
        if not path.exists():
            raise SetupError(
                f"no attestation policy at {path}: write one (see docs/operations.md) or pass "
                "--policy FILE"
            )
        return AttestationPolicy.load(path)

    def save_record(self, evidence: Evidence, nonce: bytes, enclave: VerifiedEnclave) -> None:
        record = {
            "identity": canonical.b64(evidence.identity),
            "quote": canonical.b64(evidence.quote),
            "backend": evidence.backend,
            "nonce": nonce.hex(),
            "verified_at": int(time.time()),
            "mrenclave": enclave.mrenclave,
            "simulation": enclave.simulation,
            "verdict": [
                {"rule": r.name, "passed": r.passed, "detail": r.detail} for r in enclave.verdict
            ],
        }
        write_atomic(self.record_path, canonical.dumps(record))

    def attested_enclave(self, policy: AttestationPolicy) -> tuple[VerifiedEnclave, int]:
        """Re-verify the stored evidence under ``policy``; refuse a record that is too old."""
        if not self.record_path.exists():
            raise SetupError("no attested enclave yet: run `detente party attest` first")
        doc = canonical.loads(self.record_path.read_bytes(), "attestation record")
        age = int(time.time()) - int(doc["verified_at"])
        if age > policy.max_evidence_age_seconds:
            raise SetupError(
                f"the enclave was attested {age} s ago, longer than the policy's "
                f"max_evidence_age_seconds = {policy.max_evidence_age_seconds}: run "
                "`detente party attest` again"
            )
        from protocols.attestation import Evidence, verify_evidence

        evidence = Evidence(
            canonical.unb64(doc["identity"], "identity"),
            canonical.unb64(doc["quote"], "quote"),
            str(doc["backend"]),
        )
        return verify_evidence(evidence, bytes.fromhex(doc["nonce"]), policy), age

    def enclave_signing_key(self) -> VerifyKey:
        """The attested enclave's signing key, as recorded (for result statements)."""
        if not self.record_path.exists():
            raise SetupError("no attested enclave yet: run `detente party attest` first")
        doc = canonical.loads(self.record_path.read_bytes(), "attestation record")
        from protocols import statements
        from protocols.documents import IdentityDocument

        envelope = statements.Envelope.from_bytes(canonical.unb64(doc["identity"], "identity"))
        return IdentityDocument.from_dict(canonical.loads(envelope.payload, "identity")).signing_key

    # -- data sets ------------------------------------------------------------

    @property
    def spool_dir(self) -> Path:
        """Where uploads seal their data sets before sending them (party_client.spool)."""
        return self.root / "spool"

    def save_dataset(self, dataset_id: str, manifest: bytes) -> None:
        write_atomic(self.root / "datasets" / f"{dataset_id}.manifest", manifest)

    def dataset_manifests(self) -> dict[str, bytes]:
        folder = self.root / "datasets"
        if not folder.exists():
            return {}
        return {p.stem: p.read_bytes() for p in sorted(folder.glob("*.manifest"))}
