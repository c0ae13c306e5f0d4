"""The enclave's identity: keys created inside, sealed to disk, attested on request.

The signing and HPKE keys are generated inside the enclave on first start and
sealed with the MRENCLAVE policy, so a restarted worker of the same
measurement keeps them, and no other code — nor the host — can read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from protocols import canonical, statements
from protocols.attestation import Evidence, report_data_for
from protocols.documents import IdentityDocument
from protocols.errors import FormatError
from protocols.keys import HpkePrivateKey, SigningKey, write_secret_file

_SEALED_NAME = "identity.sealed"
_SEAL_LABEL = "enclave-identity/v1"


class Runtime(Protocol):
    """What the worker needs from the LibOS runtime (libos.runtime.EnclaveRuntime)."""

    @property
    def mrenclave(self) -> bytes: ...
    @property
    def backend(self) -> str: ...
    @property
    def sealed_dir(self) -> object: ...
    def quote(self, report_data: bytes) -> bytes: ...
    def seal(self, data: bytes, label: str) -> bytes: ...
    def unseal(self, blob: bytes, label: str) -> bytes: ...


@dataclass
class EnclaveIdentity:
    signing_key: SigningKey
    hpke_key: HpkePrivateKey
    backend: str
    mrenclave: str

    @property
    def envelope(self) -> bytes:
        """The self-signed identity document (Ed25519 is deterministic: same bytes each time)."""
        document = IdentityDocument(
            backend=self.backend,
            hpke_key=self.hpke_key.public_key,
            signing_key=self.signing_key.verify_key,
            tls_certificate_sha256="",
        )
        return statements.sign(statements.IDENTITY, document.to_dict(), self.signing_key).to_bytes()

    def evidence(self, runtime: Runtime, nonce: bytes) -> Evidence:
        envelope = self.envelope
        payload = statements.Envelope.from_bytes(envelope).payload
        quote = runtime.quote(report_data_for(payload, nonce))
        return Evidence(identity=envelope, quote=quote, backend=self.backend)


def load_or_create(runtime: Runtime) -> EnclaveIdentity:
    """Unseal the identity keys, or create and seal them on first start."""
    from pathlib import Path

    path = Path(str(runtime.sealed_dir)) / _SEALED_NAME
    mrenclave = runtime.mrenclave.hex()
    if path.exists():
        keys = json.loads(runtime.unseal(path.read_bytes(), _SEAL_LABEL))
        try:
            signing = SigningKey.from_raw(canonical.unhex(keys["signing"], "sealed signing key"))
            hpke = HpkePrivateKey.from_raw(canonical.unhex(keys["hpke"], "sealed HPKE key"))
        except KeyError as exc:
            raise FormatError(f"sealed identity lacks {exc}") from None
        return EnclaveIdentity(signing, hpke, runtime.backend, mrenclave)
    signing, hpke = SigningKey.generate(), HpkePrivateKey.generate()
    sealed = runtime.seal(
        json.dumps(
            {"signing": signing.private_raw().hex(), "hpke": hpke.private_raw().hex()}
        ).encode(),
        _SEAL_LABEL,
    )
    write_secret_file(path, sealed)
    return EnclaveIdentity(signing, hpke, runtime.backend, mrenclave)
