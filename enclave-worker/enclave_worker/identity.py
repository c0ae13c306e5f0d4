"""The enclave's identity: keys created inside, sealed to disk, attested on request.

The signing and HPKE keys are generated inside the enclave on first start and
sealed with the MRENCLAVE policy, so a restarted worker of the same
measurement keeps them, and no other code — nor the host — can read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from libos.runtime import Runtime
from protocols import canonical, ratls, statements, tls
from protocols.attestation import Evidence, report_data_for
from protocols.documents import IdentityDocument
from protocols.errors import FormatError
from protocols.keys import HpkePrivateKey, HpkePublicKey, Kem, SigningKey, write_secret_file

_SEALED_NAME = "identity.sealed"
_SEAL_LABEL = "enclave-identity/v1"


@dataclass
class EnclaveIdentity:
    signing_key: SigningKey
    hpke_key: HpkePrivateKey
    backend: str
    mrenclave: str
    # The enclave offers both suites (protocols/SPEC.md §4.3): X25519 for parties
    # that did not opt in, ML-KEM-768+X25519 for post-quantum parties.
    hpke_pq_key: HpkePrivateKey | None = None

    # SHA-256 of the SubjectPublicKeyInfo of this process's TLS key, set by
    # ratls_credentials at start: the identity document names it, binding the
    # RA-TLS certificate to the quote (protocols/SPEC.md §13).
    tls_public_key_sha256: str = ""

    def private_keys(self) -> dict[str, str]:
        """The private keys as hex, the one encoding of the enclave's keys.

        ``{"signing": …, "hpke": …, "hpke_pq": …}`` (``hpke_pq`` only when the
        enclave has one): what the sealed identity holds, and what the worker
        hands a job process over its pipe. Secret: only ever sealed or sent
        there.
        """
        keys = {
            "signing": self.signing_key.private_raw().hex(),
            "hpke": self.hpke_key.private_raw().hex(),
        }
        if self.hpke_pq_key is not None:
            keys["hpke_pq"] = self.hpke_pq_key.private_raw().hex()
        return keys

    @classmethod
    def from_private_keys(
        cls, keys: Any, backend: str, mrenclave: str, what: str = "enclave keys"
    ) -> EnclaveIdentity:
        """The identity whose keys :meth:`private_keys` encoded; FormatError if they are not."""
        if not isinstance(keys, dict):
            raise FormatError(f"{what} must be a JSON object")
        for name in ("signing", "hpke"):
            if name not in keys:
                raise FormatError(f"{what} lacks {name!r}")
        # Identities sealed before the PQ option have no "hpke_pq": they offer X25519 only.
        pq = keys.get("hpke_pq")
        return cls(
            SigningKey.from_raw(canonical.unhex(keys["signing"], f"{what}: signing key")),
            HpkePrivateKey.from_raw(canonical.unhex(keys["hpke"], f"{what}: HPKE key")),
            backend,
            mrenclave,
            HpkePrivateKey.from_raw(canonical.unhex(pq, f"{what}: PQ HPKE key")) if pq else None,
        )

    def hpke_private_key_for(self, public: HpkePublicKey) -> HpkePrivateKey | None:
        """The private key of one of this enclave's HPKE keys, or None if it is not ours."""
        for key in (self.hpke_key, self.hpke_pq_key):
            if key is not None and key.public_key == public:
                return key
        return None

    @property
    def envelope(self) -> bytes:
        """The self-signed identity document (Ed25519 is deterministic: same bytes each time)."""
        document = IdentityDocument(
            backend=self.backend,
            hpke_key=self.hpke_key.public_key,
            signing_key=self.signing_key.verify_key,
            tls_public_key_sha256=self.tls_public_key_sha256,
            hpke_pq_key=self.hpke_pq_key.public_key if self.hpke_pq_key else None,
        )
        return statements.sign(statements.IDENTITY, document.to_dict(), self.signing_key).to_bytes()

    def evidence(self, runtime: Runtime, nonce: bytes) -> Evidence:
        envelope = self.envelope
        payload = statements.Envelope.from_bytes(envelope).payload
        quote = runtime.quote(report_data_for(payload, nonce))
        return Evidence(identity=envelope, quote=quote, backend=self.backend)


def ratls_credentials(
    identity: EnclaveIdentity, runtime: Runtime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh TLS key, made inside the enclave at this start, and its RA-TLS certificate.

    The key is never sealed or written anywhere: a restarted worker has a new
    one, so a certificate copied by the host is useless without the process
    that holds its key. From here on the identity document names this key.
    """
    key = tls.generate_key()
    identity.tls_public_key_sha256 = tls.public_key_sha256(key.public_key())
    evidence = identity.evidence(runtime, ratls.CERTIFICATE_NONCE)
    return key, ratls.create_certificate(key, evidence)


_EFS_NAME = "keys/identity.sealed"


# The sealed blob lives in the runtime's default encrypted mount (issue 3).
# Without a usable one (none configured, or a backend such as Gramine that
# offers no rollback-safe mount: Runtime.default_mount) it stays in ``sealed/``.


def _read_sealed(runtime: Runtime) -> bytes | None:
    fs = runtime.default_mount()
    if fs is not None and fs.exists(_EFS_NAME):
        return bytes(fs.read_bytes(_EFS_NAME))
    legacy = runtime.sealed_dir / _SEALED_NAME
    return legacy.read_bytes() if legacy.exists() else None


def _write_sealed(runtime: Runtime, sealed: bytes) -> None:
    fs = runtime.default_mount()
    if fs is not None:
        fs.write_bytes(_EFS_NAME, sealed)
    else:
        write_secret_file(runtime.sealed_dir / _SEALED_NAME, sealed)


def load_sealed(runtime: Runtime) -> EnclaveIdentity | None:
    """The identity this worker sealed before, or None on its first start."""
    blob = _read_sealed(runtime)
    if blob is None:
        return None
    keys = json.loads(runtime.unseal(blob, _SEAL_LABEL))
    return EnclaveIdentity.from_private_keys(
        keys, runtime.backend, runtime.mrenclave, "sealed identity"
    )


def seal(runtime: Runtime, identity: EnclaveIdentity) -> None:
    """Seal ``identity``'s keys where :func:`load_sealed` finds them at the next start."""
    _write_sealed(runtime, runtime.seal(json.dumps(identity.private_keys()).encode(), _SEAL_LABEL))


def load_or_create(runtime: Runtime) -> EnclaveIdentity:
    """Unseal the identity keys, or create and seal them on first start.

    The sealed blob lives in the encrypted file system when the image mounts
    one, so the host sees neither the blob nor its name and cannot roll it back.
    A worker that joins a pool gets its keys from a worker of the pool instead
    (enclave_worker.provisioning) and seals them the same way.
    """
    sealed = load_sealed(runtime)
    if sealed is not None:
        return sealed
    identity = EnclaveIdentity(
        SigningKey.generate(),
        HpkePrivateKey.generate(),
        runtime.backend,
        runtime.mrenclave,
        HpkePrivateKey.generate(Kem.MLKEM768_X25519),
    )
    seal(runtime, identity)
    return identity
