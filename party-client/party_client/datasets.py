"""A party's data sets: validate a table, seal it to the attested enclave, sign and upload it."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from party_client import tables
from party_client.home import PartyHome
from party_client.remote import Coordinator, RemoteDataset
from protocols import hpke, stream
from protocols.documents import DatasetManifest, check_id, schema_columns, schema_sha256
from protocols.errors import IntegrityError
from protocols.policy import AttestationPolicy
from protocols.statements import Envelope


@dataclass
class Uploaded:
    dataset_id: str
    rows: int
    columns: int
    ciphertext_size: int
    simulation: bool


def upload(
    home: PartyHome,
    policy: AttestationPolicy,
    path: Path,
    label: str,
    id_column: str | None,
    dataset_id: str | None = None,
    publish_schema: bool = False,
    chunk_size: int = stream.CHUNK_SIZE,
    display_name: str = "",
) -> Uploaded:
    """Validate, convert to Arrow IPC, seal to the attested enclave, sign, upload.

    The manifest names the data set by ``display_name`` only if the owner
    gives one: the local file name stays local.
    """
    enclave, _ = home.attested_enclave(policy)
    prepared = tables.read_table(path, label, id_column)
    table = prepared.table
    columns = schema_columns(table.schema)
    dataset_id = check_id(
        dataset_id or f"{home.config()['name']}-{secrets.token_hex(6)}", "dataset id"
    )
    data_key = secrets.token_bytes(32)
    # A post-quantum party wraps to the enclave's post-quantum key (protocols/SPEC.md §4.3).
    enclave_key = enclave.identity.data_key_recipient(home.hpke_key().kem)
    ciphertext = stream.seal_stream(data_key, tables.to_ipc(table), dataset_id.encode(), chunk_size)
    signing = home.signing_key()
    manifest = DatasetManifest(
        dataset_id=dataset_id,
        name=display_name,
        owner_key=signing.verify_key,
        schema_sha256=schema_sha256(columns),
        row_count=table.num_rows,
        ciphertext_sha256=hashlib.sha256(ciphertext).hexdigest(),
        ciphertext_size=len(ciphertext),
        wrapped_key=hpke.wrap_key(
            data_key, enclave_key, hpke.data_key_info(dataset_id, enclave_key)
        ),
        sealed_to_mrenclave=enclave.mrenclave,
        sealed_to_hpke_key=enclave_key,
        public_schema=columns if publish_schema else None,
        created_at=int(time.time()),
        label=prepared.label,
    ).sign(signing)
    with Coordinator.for_home(home) as remote:
        remote.upload(manifest.to_bytes(), ciphertext)
    home.save_dataset(dataset_id, manifest.to_bytes())
    return Uploaded(dataset_id, table.num_rows, len(columns), len(ciphertext), enclave.simulation)


def list_datasets(home: PartyHome) -> list[RemoteDataset]:
    """This party's data sets and those of the jobs it takes part in, as the coordinator lists
    them (ids, owners, sizes; verify a manifest with :func:`fetch_manifest` before use)."""
    with Coordinator.for_home(home) as remote:
        return remote.datasets()


def fetch_manifest(remote: Coordinator, dataset_id: str) -> tuple[Envelope, DatasetManifest]:
    """A data set's manifest from the coordinator, verified (signed by its owner)."""
    record = remote.dataset(dataset_id)
    envelope = Envelope.from_bytes(record.manifest, "dataset manifest")
    manifest = DatasetManifest.verify(envelope)
    if manifest.dataset_id != dataset_id:
        raise IntegrityError(
            f"the coordinator returned the manifest of {manifest.dataset_id!r} for {dataset_id!r}"
        )
    return envelope, manifest
