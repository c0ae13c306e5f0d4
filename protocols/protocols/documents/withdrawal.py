"""A data owner's signed withdrawal of a data set (protocols/SPEC.md §3.11).

The owner signs it with the key that signed the data set's manifest; it names
the data set and the digest of that manifest. The coordinator deletes the
ciphertext and cancels the jobs that wait on it; every enclave worker that
receives it records the manifest digest as withdrawn in its rollback-protected
encrypted mount, refuses any job that names it, and destroys the checkpoints
and sealed models derived from it (crypto-shredding: the only key that opens a
kept copy of the ciphertext refuses to).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocols import statements
from protocols.canonical import digest_field
from protocols.canonical import field as get
from protocols.documents.common import VERSION, check_id, check_version
from protocols.documents.manifest import DatasetManifest
from protocols.errors import FormatError, SignatureError
from protocols.keys import SigningKey, VerifyKey
from protocols.statements import Envelope


@dataclass(frozen=True)
class DatasetWithdrawal:
    """The owner's statement: data set ``dataset_id`` (this manifest) is withdrawn."""

    dataset_id: str
    manifest_digest: str  # payload digest of the signed manifest it withdraws
    owner_key: VerifyKey  # the manifest's owner_key: who signs this
    withdrawn_at: int  # Unix seconds, by the owner's clock (informative)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "dataset_id": self.dataset_id,
            "manifest_digest": self.manifest_digest,
            "owner_key": self.owner_key.hex,
            "withdrawn_at": self.withdrawn_at,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> DatasetWithdrawal:
        what = "dataset withdrawal"
        check_version(doc, what)
        at = get(doc, "withdrawn_at", int, what)
        if isinstance(at, bool) or at < 0:
            raise FormatError("dataset withdrawal withdrawn_at must be Unix seconds ≥ 0")
        return cls(
            check_id(get(doc, "dataset_id", str, what), "dataset id"),
            digest_field(doc, "manifest_digest", what),
            VerifyKey.from_hex(get(doc, "owner_key", str, what)),
            at,
        )

    def sign(self, key: SigningKey) -> Envelope:
        if key.verify_key != self.owner_key:
            raise SignatureError(
                "a dataset withdrawal is signed by the owner key it names (the key that "
                "signed the manifest)"
            )
        return statements.sign(statements.DATASET_WITHDRAWAL, self.to_dict(), key)

    @classmethod
    def verify(
        cls, envelope: Envelope, manifest: Envelope
    ) -> tuple[DatasetWithdrawal, DatasetManifest]:
        """Check the withdrawal against the signed manifest it names; both, verified.

        It must be signed by the owner key it names, which must be the
        manifest's ``owner_key`` (the manifest itself signed by it), and name
        that manifest's data set id and digest. Raises SignatureError or
        FormatError naming what differs.
        """
        doc = statements.verify(envelope, statements.DATASET_WITHDRAWAL, None, "dataset withdrawal")
        withdrawal = cls.from_dict(doc)
        if withdrawal.owner_key != envelope.signer:
            raise SignatureError(
                f"the withdrawal of data set {withdrawal.dataset_id!r} is not signed by the owner "
                f"key it names ({withdrawal.owner_key.hex[:16]}…, signed by "
                f"{envelope.signer.hex[:16]}…)"
            )
        owned = DatasetManifest.verify(manifest)
        if owned.owner_key != withdrawal.owner_key:
            raise SignatureError(
                f"data set {owned.dataset_id!r} is owned by {owned.owner_key.hex[:16]}…: a "
                f"withdrawal signed by {withdrawal.owner_key.hex[:16]}… does not withdraw it "
                "(only the owner that signed the manifest withdraws it)"
            )
        if (
            withdrawal.dataset_id != owned.dataset_id
            or withdrawal.manifest_digest != manifest.digest
        ):
            raise FormatError(
                f"the withdrawal names data set {withdrawal.dataset_id!r} with manifest digest "
                f"{withdrawal.manifest_digest[:16]}…, not data set {owned.dataset_id!r} with "
                f"manifest digest {manifest.digest[:16]}…"
            )
        return withdrawal, owned
