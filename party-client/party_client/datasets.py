"""A party's data sets: validate a table, seal it to the attested enclave, sign and upload it.

The table is never held whole: it is read in record batches
(:class:`party_client.tables.TableScan`), written as one Arrow IPC stream into
a sink that seals it chunk by chunk into a private spool file
(:class:`party_client.spool.SealedSpool`) while hashing the ciphertext; then
the manifest — which names that hash — is signed, the spool is kept as a
pending upload (:mod:`party_client.resume`) and streamed to the coordinator in
``CHUNK_SIZE`` pieces from the last byte it acknowledged (0 for a new upload:
docs/protocol.md §3). A table that fails validation is refused before the
coordinator is contacted: nothing is uploaded.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from party_client import tables
from party_client.home import PartyHome
from party_client.remote import Coordinator, CoordinatorError, RemoteDataset, connected
from party_client.resume import PendingUpload, find_pending, keep
from party_client.spool import SealedSpool
from protocols import hpke, stream
from protocols.documents import DatasetManifest, check_id, schema_columns, schema_sha256
from protocols.errors import IntegrityError, WrongState
from protocols.policy import AttestationPolicy
from protocols.statements import Envelope

SEALING = "sealing"  # rows read, checked and sealed into the spool file
SENDING = "sending"  # rows and bytes sent to the coordinator
# A coordinator busy with an earlier stream of the same upload is asked again this many
# times, this many seconds apart.
BUSY_RETRIES = 5
BUSY_WAIT = 1.0
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
    resumed_at: int = 0  # bytes the coordinator held when this sending began (a resume)


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
    resume: bool = False,
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

    The upload is resumable: if sending fails, the sealed copy stays in the
    party's home (:mod:`party_client.resume`) and ``resume=True`` sends the
    rest of it — of the same ciphertext, under the same signed manifest —
    from the last byte the coordinator acknowledged (the table is not read
    again; it must not have changed). ``dataset_id`` then picks one of
    several interrupted uploads of ``path``.

    The manifest names the data set by ``display_name`` only if the owner
    gives one: the local file name stays local.
    """
    if resume:
        pending = find_pending(home.spool_dir, Path(path), dataset_id)
        pending.check()
        return _send(home, pending, progress, remote)
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
    try:
        source = os.stat(path)
        stamp = (source.st_size, source.st_mtime_ns)
    except OSError:  # a table given in memory: ``path`` only names it
        stamp = (-1, 0)
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
        pending = keep(
            home.spool_dir,
            spool.path,
            PendingUpload(
                dataset_id=dataset_id,
                manifest=manifest.to_bytes(),
                size=size,
                source=str(Path(path).resolve()),
                source_size=stamp[0],
                source_mtime_ns=stamp[1],
                rows=scan.rows,
                columns=len(columns),
                simulation=enclave.simulation,
                chunk_size=chunk_size,
                plaintext_size=spool.plaintext_size,
                categorical=[n for n, k in scan.columns.items() if k == tables.CATEGORICAL],
                label=label,
                marks=marks,
            ),
        )
    return _send(home, pending, progress, remote)


class UploadInterrupted(CoordinatorError):
    """Sending a sealed data set failed on the way (the network, the coordinator's
    availability); its sealed copy is kept to resume from. ``code`` and ``kind`` are the
    failure's, as for any :class:`~party_client.remote.CoordinatorError`."""


# Failures after which the same bytes may yet arrive: the sealed copy is kept. Any other
# refusal (the id is taken, the caller may not, the bytes do not match) would only repeat.
_RESUMABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _resumable(exc: CoordinatorError) -> bool:
    return exc.code in _RESUMABLE or exc.code is None or issubclass(exc.kind, WrongState)


def _send(
    home: PartyHome,
    pending: PendingUpload,
    progress: ProgressCallback | None,
    remote: Coordinator | None,
) -> Uploaded:
    """Send the pending upload's remaining bytes; forget it once the coordinator confirms.

    A coordinator still holding the stream of an interrupted attempt (it has not yet
    noticed the cut) refuses a second one for a moment: that is retried, a few times.
    """
    try:
        with connected(home, remote) as coordinator:
            for attempt in range(BUSY_RETRIES + 1):
                try:
                    status = coordinator.begin_upload(pending.manifest)
                    if status.dataset is None:
                        left = pending.size - status.received
                        status = coordinator.send_upload(
                            status.upload_id,
                            status.received,
                            _sending(pending, status.received, progress),
                            timeout=coordinator.timeout + left / MIN_UPLOAD_RATE,
                        )
                    break
                except CoordinatorError as exc:
                    if not issubclass(exc.kind, WrongState) or attempt == BUSY_RETRIES:
                        raise
                    time.sleep(BUSY_WAIT)
    except CoordinatorError as exc:
        if issubclass(exc.kind, IntegrityError) and pending.intact():
            # The coordinator's copy was wrong (it deleted it), not ours: send ours again.
            raise UploadInterrupted(
                f"{exc}. The sealed copy of data set {pending.dataset_id!r} in this party's "
                "home still matches its signed manifest, so the coordinator's copy was "
                f"damaged: run `detente party upload {pending.source} --resume` to send it "
                "again whole",
                exc.code,
                exc.kind,
            ) from None
        if not _resumable(exc):
            pending.remove()  # the same bytes would be refused again: nothing to resume
            raise
        raise UploadInterrupted(
            f"{exc}; the sealed data set {pending.dataset_id!r} is kept: run `detente party "
            f"upload {pending.source} --resume` to send the rest",
            exc.code,
            exc.kind,
        ) from None
    if status.dataset is None:
        raise UploadInterrupted(
            f"the coordinator holds {status.received} of {pending.size} bytes of data set "
            f"{pending.dataset_id!r}: run `detente party upload {pending.source} --resume`"
        )
    home.save_dataset(pending.dataset_id, pending.manifest)
    pending.remove()
    return Uploaded(
        pending.dataset_id,
        pending.rows,
        pending.columns,
        pending.size,
        pending.simulation,
        pending.categorical,
        pending.label,
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
    pending: PendingUpload, offset: int, progress: ProgressCallback | None
) -> Iterator[bytes]:
    """The spool from ``offset`` in ``CHUNK_SIZE`` pieces, reporting rows and bytes sent
    (counting what the coordinator already held)."""
    sent = offset
    with pending.spool_path.open("rb") as spool:
        spool.seek(offset)
        while piece := spool.read(stream.CHUNK_SIZE):
            yield piece
            sent += len(piece)
            if progress is not None:
                rows = pending.rows_within(sent)
                progress(UploadProgress(SENDING, rows, sent, pending.rows, pending.size, offset))


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
