"""A party's data sets: validate a table, seal it to the attested enclave, sign and upload it.

The table is never held whole: it is read in record batches
(:class:`party_client.tables.TableScan`), written as one Arrow IPC stream into
a sink that seals it chunk by chunk into a private spool file
(:class:`party_client.spool.SealedSpool`) while hashing the ciphertext; then
the manifest — which names that hash — is signed, and the spool is streamed to
the coordinator in ``CHUNK_SIZE`` pieces. A table that fails validation is
refused before the coordinator is contacted: nothing is uploaded.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from party_client import tables
from party_client.home import PartyHome
from party_client.remote import Coordinator, RemoteDataset, connected
from party_client.spool import SealedSpool
from protocols import hpke, stream
from protocols.documents import DatasetManifest, check_id, schema_columns, schema_sha256
from protocols.errors import IntegrityError
from protocols.policy import AttestationPolicy
from protocols.statements import Envelope

SEALING = "sealing"  # rows read, checked and sealed into the spool file
SENDING = "sending"  # rows and bytes sent to the coordinator
# The slowest upload rate tolerated before the call times out (on top of the usual timeout).
MIN_UPLOAD_RATE = 1 << 20


@dataclass(frozen=True)
class UploadProgress:
    """How far an upload is.

    ``phase`` is ``"sealing"`` (``rows`` read, checked and sealed, ``bytes`` of
    ciphertext written to the spool file; the totals are not known yet) or
    ``"sending"`` (``rows`` and ``bytes`` of ciphertext handed to the
    coordinator's stream, out of ``total_rows`` and ``total_bytes``).
    """

    phase: str
    rows: int
    bytes: int
    total_rows: int | None = None
    total_bytes: int | None = None


ProgressCallback = Callable[[UploadProgress], None]


@dataclass
class Uploaded:
    dataset_id: str
    rows: int
    columns: int
    ciphertext_size: int
    simulation: bool
    categorical: list[str] = field(default_factory=list)  # the columns sent as categories
    label: str | None = None


def upload(
    home: PartyHome,
    policy: AttestationPolicy,
    path: Path,
    label: str | None,
    id_column: str | None,
    dataset_id: str | None = None,
    publish_schema: bool = False,
    chunk_size: int = stream.CHUNK_SIZE,
    display_name: str = "",
    column_kinds: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
    *,
    remote: Coordinator | None = None,
) -> Uploaded:
    """Validate, convert to Arrow IPC, seal to the attested enclave, sign, upload.

    ``label`` may be None (in a vertical job one party holds it; the manifest
    then carries no label summary). ``column_kinds`` maps column names to
    ``"numeric"`` or ``"categorical"``, overriding what the file suggests
    (:func:`party_client.tables.load_schema` reads one from a file).
    ``progress``, if given, is called after each batch is sealed and each
    piece is sent (:class:`UploadProgress`); while sending it runs on the
    thread that feeds gRPC.

    The manifest names the data set by ``display_name`` only if the owner
    gives one: the local file name stays local.
    """
    enclave, _ = home.attested_enclave(policy)
    scan = tables.TableScan(Path(path), label, id_column, dict(column_kinds or {}))
    columns = schema_columns(scan.schema)
    dataset_id = check_id(
        dataset_id or f"{home.config()['name']}-{secrets.token_hex(6)}", "dataset id"
    )
    data_key = secrets.token_bytes(32)
    # A post-quantum party wraps to the enclave's post-quantum key (protocols/SPEC.md §4.3).
    enclave_key = enclave.identity.data_key_recipient(home.hpke_key().kem)
    signing = home.signing_key()
    with SealedSpool(home.spool_dir, data_key, dataset_id.encode(), chunk_size) as spool:
        marks = seal_batches(scan, spool, progress)
        size, digest = spool.finish()
        manifest = DatasetManifest(
            dataset_id=dataset_id,
            name=display_name,
            owner_key=signing.verify_key,
            schema_sha256=schema_sha256(columns),
            row_count=scan.rows,
            ciphertext_sha256=digest,
            ciphertext_size=size,
            wrapped_key=hpke.wrap_key(
                data_key, enclave_key, hpke.data_key_info(dataset_id, enclave_key)
            ),
            sealed_to_mrenclave=enclave.mrenclave,
            sealed_to_hpke_key=enclave_key,
            public_schema=columns if publish_schema else None,
            created_at=int(time.time()),
            label=scan.label_summary,
        ).sign(signing)
        with connected(home, remote) as coordinator:
            coordinator.upload(
                manifest.to_bytes(),
                _sending(spool, marks, scan.rows, progress),
                timeout=coordinator.timeout + size / MIN_UPLOAD_RATE,
            )
    home.save_dataset(dataset_id, manifest.to_bytes())
    categorical = [n for n, kind in scan.columns.items() if kind == tables.CATEGORICAL]
    return Uploaded(
        dataset_id, scan.rows, len(columns), size, enclave.simulation, categorical, label
    )


def seal_batches(
    scan: tables.TableScan, sink: SealedSpool, progress: ProgressCallback | None = None
) -> list[tuple[int, int]]:
    """Write the scan's batches as one Arrow IPC stream into ``sink``.

    Returns, after each batch, (plaintext bytes written, rows written): what
    rows a count of sent bytes carries whole.
    """
    import pyarrow as pa

    marks: list[tuple[int, int]] = []
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), scan.schema) as writer:
        for batch in scan.batches():
            writer.write_batch(batch)
            marks.append((sink.plaintext_size, scan.rows))
            if progress is not None:
                progress(UploadProgress(SEALING, scan.rows, sink.size))
    tables.release_memory()  # sending needs none of it
    return marks


def _sending(
    spool: SealedSpool,
    marks: list[tuple[int, int]],
    rows: int,
    progress: ProgressCallback | None,
) -> Iterator[bytes]:
    """The spool in ``CHUNK_SIZE`` pieces, reporting the rows and bytes sent so far."""
    sent = 0
    mark = 0
    for piece in spool.pieces(stream.CHUNK_SIZE):
        yield piece
        sent += len(piece)
        if progress is not None:
            whole = spool.plaintext_within(sent)
            while mark < len(marks) and marks[mark][0] <= whole:
                mark += 1
            done = rows if sent >= spool.size else (marks[mark - 1][1] if mark else 0)
            progress(UploadProgress(SENDING, done, sent, rows, spool.size))


def list_datasets(home: PartyHome, *, remote: Coordinator | None = None) -> list[RemoteDataset]:
    """This party's data sets and those of the jobs it takes part in, as the coordinator lists
    them (ids, owners, sizes; verify a manifest with :func:`fetch_manifest` before use)."""
    with connected(home, remote) as coordinator:
        return coordinator.datasets()


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
