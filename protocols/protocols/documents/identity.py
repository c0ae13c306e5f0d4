"""The documents naming a party or an enclave: registration (§3.1) and identity (§3.2).

Formats: protocols/SPEC.md §3.1–3.2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocols import statements
from protocols.canonical import field as get
from protocols.documents.common import VERSION, check_id, check_version, party_fingerprint
from protocols.errors import AttestationError, FormatError, SignatureError
from protocols.keys import HpkePublicKey, Kem, SigningKey, VerifyKey
from protocols.statements import Envelope


@dataclass(frozen=True)
class Registration:
    """A party's self-signed statement of its name and keys."""

    name: str
    signing_key: VerifyKey
    hpke_key: HpkePublicKey

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "name": self.name,
            "signing_key": self.signing_key.hex,
            "hpke_key": self.hpke_key.hex,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Registration:
        what = "party registration"
        check_version(doc, what)
        return cls(
            check_id(get(doc, "name", str, what), "party name"),
            VerifyKey.from_hex(get(doc, "signing_key", str, what)),
            HpkePublicKey.from_hex(get(doc, "hpke_key", str, what)),
        )

    @property
    def fingerprint(self) -> str:
        return party_fingerprint(self.signing_key, self.hpke_key)

    def sign(self, key: SigningKey) -> Envelope:
        return statements.sign(statements.REGISTRATION, self.to_dict(), key)

    @classmethod
    def verify(cls, envelope: Envelope) -> Registration:
        """A registration must be signed by the key it registers."""
        reg = cls.from_dict(
            statements.verify(envelope, statements.REGISTRATION, None, "registration")
        )
        if reg.signing_key != envelope.signer:
            raise SignatureError("registration is not signed by the key it registers")
        return reg


@dataclass(frozen=True)
class IdentityDocument:
    """What an enclave attests to: its keys, bound into REPORTDATA (protocols/SPEC.md §7)."""

    backend: str
    hpke_key: HpkePublicKey
    signing_key: VerifyKey
    tls_public_key_sha256: str
    # Optional post-quantum key (ML-KEM-768+X25519) offered beside the X25519
    # ``hpke_key``: parties that chose the PQ suite wrap their data keys to it.
    hpke_pq_key: HpkePublicKey | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "version": VERSION,
            "backend": self.backend,
            "hpke_key": self.hpke_key.hex,
            "signing_key": self.signing_key.hex,
            "tls_public_key_sha256": self.tls_public_key_sha256,
        }
        if self.hpke_pq_key is not None:  # absent, not null: older documents keep their bytes
            doc["hpke_pq_key"] = self.hpke_pq_key.hex
        return doc

    def data_key_recipient(self, kem: Kem) -> HpkePublicKey:
        """The enclave key a party whose own HPKE key is of ``kem`` wraps its data keys to.

        A post-quantum party never falls back to X25519: that would undo the
        protection it chose (protocols/SPEC.md §4.3).
        """
        for key in (self.hpke_key, self.hpke_pq_key):
            if key is not None and key.kem is kem:
                return key
        raise AttestationError(
            f"the attested enclave offers no {kem.label} HPKE key, and this party wraps its "
            f"data keys only with {kem.label}: attest an enclave whose identity document has "
            "hpke_pq_key (`detente party attest`), or use a party created without --pq"
        )

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> IdentityDocument:
        what = "enclave identity document"
        check_version(doc, what)
        pq = doc.get("hpke_pq_key")
        if pq is not None:
            pq = HpkePublicKey.from_hex(get(doc, "hpke_pq_key", str, what))
            if pq.kem is not Kem.MLKEM768_X25519:
                raise FormatError(f"{what} hpke_pq_key must be an ML-KEM-768+X25519 key")
        return cls(
            get(doc, "backend", str, what),
            HpkePublicKey.from_hex(get(doc, "hpke_key", str, what)),
            VerifyKey.from_hex(get(doc, "signing_key", str, what)),
            get(doc, "tls_public_key_sha256", str, what),
            hpke_pq_key=pq,
        )
