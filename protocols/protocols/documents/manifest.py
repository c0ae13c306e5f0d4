"""A data set's signed manifest and the schema description it hashes.

Format: protocols/SPEC.md §3.3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocols import canonical, statements
from protocols.canonical import digest_field, size_field
from protocols.canonical import field as get
from protocols.documents.common import VERSION, check_id, check_version
from protocols.errors import FormatError, SignatureError
from protocols.keys import HpkePublicKey, SigningKey, VerifyKey
from protocols.objectives import LabelSummary
from protocols.statements import Envelope


@dataclass(frozen=True)
class DatasetManifest:
    """A data set's signed description (docs/protocol.md §3)."""

    dataset_id: str
    name: str
    owner_key: VerifyKey
    schema_sha256: str
    row_count: int
    ciphertext_sha256: str
    ciphertext_size: int
    wrapped_key: bytes
    sealed_to_mrenclave: str
    sealed_to_hpke_key: HpkePublicKey
    public_schema: list[dict[str, str]] | None = None
    created_at: int = 0
    label: LabelSummary | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "version": VERSION,
            "dataset_id": self.dataset_id,
            "name": self.name,
            "owner_key": self.owner_key.hex,
            "schema_sha256": self.schema_sha256,
            "row_count": self.row_count,
            "ciphertext_sha256": self.ciphertext_sha256,
            "ciphertext_size": self.ciphertext_size,
            "wrapped_key": canonical.b64(self.wrapped_key),
            "sealed_to": {
                "mrenclave": self.sealed_to_mrenclave,
                "hpke_key": self.sealed_to_hpke_key.hex,
            },
            "created_at": self.created_at,
        }
        if self.public_schema is not None:
            doc["public_schema"] = self.public_schema
        if self.label is not None:
            doc["label"] = self.label.to_dict()
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> DatasetManifest:
        what = "dataset manifest"
        check_version(doc, what)
        sealed = get(doc, "sealed_to", dict, what)
        schema = doc.get("public_schema")
        if schema is not None and not (
            isinstance(schema, list)
            and all(
                isinstance(c, dict)
                and isinstance(c.get("name"), str)
                and isinstance(c.get("type"), str)
                for c in schema
            )
        ):
            raise FormatError("dataset manifest public_schema must be a list of {name, type}")
        return cls(
            dataset_id=check_id(get(doc, "dataset_id", str, what), "dataset id"),
            name=get(doc, "name", str, what),
            owner_key=VerifyKey.from_hex(get(doc, "owner_key", str, what)),
            schema_sha256=digest_field(doc, "schema_sha256", what),
            row_count=size_field(doc, "row_count", what),
            ciphertext_sha256=digest_field(doc, "ciphertext_sha256", what),
            ciphertext_size=size_field(doc, "ciphertext_size", what),
            wrapped_key=canonical.unb64(get(doc, "wrapped_key", str, what), "wrapped key"),
            sealed_to_mrenclave=digest_field(sealed, "mrenclave", what),
            sealed_to_hpke_key=HpkePublicKey.from_hex(get(sealed, "hpke_key", str, what)),
            public_schema=schema,
            created_at=get(doc, "created_at", int, what),
            label=LabelSummary.from_dict(doc["label"]) if doc.get("label") is not None else None,
        )

    def sign(self, key: SigningKey) -> Envelope:
        return statements.sign(statements.DATASET_MANIFEST, self.to_dict(), key)

    @classmethod
    def verify(cls, envelope: Envelope) -> DatasetManifest:
        """A manifest must be signed by the owner key it names."""
        doc = statements.verify(envelope, statements.DATASET_MANIFEST, None, "dataset manifest")
        manifest = cls.from_dict(doc)
        if manifest.owner_key != envelope.signer:
            raise SignatureError(
                f"dataset manifest {manifest.dataset_id!r} is not signed by its owner key "
                f"{manifest.owner_key.hex[:16]}… (signed by {envelope.signer.hex[:16]}…)"
            )
        return manifest


def schema_columns(schema: Any) -> list[dict[str, str]]:
    """The description of an Arrow schema that manifests hash and publish: its columns as
    ``{"name", "type"}`` (Arrow's type names), in order. One rule for party and enclave."""
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def schema_sha256(columns: list[dict[str, str]]) -> str:
    """Digest of a table schema given as [{"name", "type"}] (Arrow type names), in order."""
    return canonical.sha256_hex(canonical.dumps(columns))
