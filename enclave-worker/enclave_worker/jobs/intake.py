"""Intake: each data set opened chunk by chunk as its ciphertext arrives, read into Arrow batches.

No data set is ever held whole as ciphertext or plaintext: each sealed chunk
(protocols/SPEC.md §5) is opened as soon as its last byte arrives — which
chunk is the stream's last follows from the size in the signed manifest —
and its plaintext goes to an Arrow IPC stream reader on a thread of the data
set's own, which builds the table from record batches. The ciphertext is
hashed as it passes; once a data set is complete its size, digest, schema and
row count are checked against its signed manifest, before any training.

Errors name the data set and the kind of problem, never a value: Arrow's
messages (which may quote bytes of the data) are replaced.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from enclave_worker.identity import EnclaveIdentity
from enclave_worker.jobs.consent import AcceptedJob
from enclave_worker.jobs.environment import JobProgress
from protocols import hpke, stream
from protocols.documents import DatasetManifest, schema_columns, schema_sha256
from protocols.errors import ConsentError, DetenteError, FormatError, IntegrityError

log = logging.getLogger(__name__)

# Plaintext chunks waiting for Arrow's reader (8 MiB): the opener waits beyond that.
_QUEUED_CHUNKS = 8
_POLL_SECONDS = 0.2
_REPORTS = 10  # progress reports per data set while it arrives (every 10 %)


class _Stopped(Exception):
    """The intake was abandoned: Arrow's reader stops reading."""


class _PlaintextPipe:
    """A read-only file over plaintext chunks that another thread puts in, for Arrow's reader.

    ``read`` returns views of the chunks where it can, so record batches refer
    to the chunks' memory instead of copies of it.
    """

    closed = False

    def __init__(self) -> None:
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUED_CHUNKS)
        self._current = memoryview(b"")
        self._ended = False
        self.stopped = threading.Event()

    def put(self, plaintext: bytes | None, reader: threading.Thread) -> None:
        """Hand over a chunk (None: the end); dropped once ``reader`` no longer reads."""
        while reader.is_alive():
            try:
                self._chunks.put(plaintext, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def _next(self) -> bool:
        while not self._ended:
            if self.stopped.is_set():
                raise _Stopped
            try:
                chunk = self._chunks.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            if chunk is None:
                self._ended = True
            else:
                self._current = memoryview(chunk)
                return True
        return False

    def read(self, size: int = -1) -> bytes | memoryview:
        parts: list[memoryview] = []
        wanted = size
        while wanted != 0:
            if not self._current and not self._next():
                break
            piece = self._current if wanted < 0 else self._current[:wanted]
            self._current = self._current[len(piece) :]
            parts.append(piece)
            if wanted > 0:
                wanted -= len(piece)
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)


class DatasetIntake:
    """One data set arriving: its chunks opened as they complete, its table read as they open."""

    def __init__(self, identity: EnclaveIdentity, manifest: DatasetManifest) -> None:
        self.manifest = manifest
        self.dataset_id = manifest.dataset_id
        self.received = 0
        # The manifest names which of the enclave's keys (X25519 or post-quantum) it used.
        own = manifest.sealed_to_hpke_key
        private = identity.hpke_private_key_for(own)
        if private is None:
            raise ConsentError(f"data set {self.dataset_id!r} was sealed to another enclave key")
        self._key = hpke.unwrap_key(
            manifest.wrapped_key, private, hpke.data_key_info(self.dataset_id, own)
        )
        self._digest = hashlib.sha256()
        self._pending = bytearray()  # a chunk (or the header) not yet complete
        self._opener: stream.StreamOpener | None = None
        self._body = 0  # ciphertext bytes after the header already opened
        self._last_opened = False
        self._pipe = _PlaintextPipe()
        self._batches: list[Any] = []
        self._schema: Any = None
        self.rows = 0
        self._failure: BaseException | None = None
        self._reader = threading.Thread(
            target=self._read, name=f"intake-{self.dataset_id}"[:64], daemon=True
        )
        self._reader.start()

    @property
    def complete(self) -> bool:
        return self.received == self.manifest.ciphertext_size

    # --- the reader thread ---------------------------------------------------------------

    def _read(self) -> None:
        try:
            import pyarrow as pa

            try:
                reader = pa.ipc.open_stream(self._pipe)
                self._schema = reader.schema
                while True:
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        break
                    self._batches.append(batch)
                    self.rows += batch.num_rows
            except _Stopped:
                raise
            except (pa.ArrowException, ValueError, OSError, TypeError):
                # Arrow's text may quote bytes of the data: only the kind of problem leaves.
                self._failure = FormatError(
                    f"data set {self.dataset_id!r} is not a readable Arrow IPC stream"
                )
        except _Stopped:
            pass
        except BaseException as exc:  # MemoryError and the like: reported by finish()
            self._failure = exc

    # --- the receiving thread ------------------------------------------------------------

    def _integrity(self, exc: DetenteError) -> DetenteError:
        return type(exc)(f"data set {self.dataset_id!r}: {exc}")

    def feed(self, data: bytes | memoryview) -> None:
        """Hash ``data``, open every chunk it completes and hand the plaintext to the reader.

        The caller has counted ``data`` against the manifest (AcceptedJob.check_chunk).
        """
        view = memoryview(data)
        self.received += len(view)
        self._digest.update(view)
        try:
            while view:
                if self._opener is None:
                    view = self._take(view, stream.HEADER.size)
                    if len(self._pending) == stream.HEADER.size:
                        header = bytes(self._pending)
                        self._pending.clear()
                        self._opener = stream.StreamOpener(
                            self._key, header, self.dataset_id.encode()
                        )
                    continue
                body = self.manifest.ciphertext_size - stream.HEADER.size
                size = min(self._opener.chunk_size + stream.TAG_SIZE, body - self._body)
                if size <= 0 or self._last_opened:
                    raise IntegrityError("data found after the last chunk of the stream")
                if not self._pending and len(view) >= size:
                    chunk: bytes | memoryview = view[:size]
                    view = view[size:]
                else:
                    view = self._take(view, size)
                    if len(self._pending) < size:
                        break
                    chunk = bytes(self._pending)
                    self._pending.clear()
                last = self._body + size == body
                plaintext = self._opener.open_chunk(chunk, last=last)
                self._body += size
                self._last_opened = last
                self._pipe.put(plaintext, self._reader)
                if last:
                    self._pipe.put(None, self._reader)
        except (IntegrityError, FormatError) as exc:
            self.stop()
            raise self._integrity(exc) from None

    def _take(self, view: memoryview, size: int) -> memoryview:
        """Move bytes of ``view`` into the pending buffer until it holds ``size``."""
        take = min(size - len(self._pending), len(view))
        self._pending += view[:take]
        return view[take:]

    def stop(self) -> None:
        """Abandon this data set: the reader thread ends without reading the rest."""
        self._pipe.stopped.set()

    def finish(self) -> Any:
        """The data set's table, once its ciphertext is complete and matches the manifest."""
        import pyarrow as pa

        manifest, where = self.manifest, f"data set {self.dataset_id!r}"
        if not self.complete:
            self.stop()
            raise IntegrityError(
                f"{where} is {self.received} bytes, its manifest says "
                f"{manifest.ciphertext_size}: it was truncated or extended"
            )
        if self._digest.hexdigest() != manifest.ciphertext_sha256:
            self.stop()
            raise IntegrityError(f"{where} does not match the digest in its signed manifest")
        if not self._last_opened:
            self.stop()
            raise IntegrityError(f"{where} has no last chunk: it was truncated")
        self._reader.join()
        if self._failure is not None:
            raise self._failure
        table = pa.Table.from_batches(self._batches, schema=self._schema)
        self._batches = []
        if schema_sha256(schema_columns(table.schema)) != manifest.schema_sha256:
            raise IntegrityError(f"{where} schema differs from its manifest")
        if table.num_rows != manifest.row_count:
            raise IntegrityError(f"{where} row count differs from its manifest")
        return table


class Intake:
    """The data sets of one job, received in any order and pieces, checked, in terms order."""

    def __init__(self, identity: EnclaveIdentity, job: AcceptedJob) -> None:
        self._identity = identity
        self.job = job
        self._arriving: dict[str, DatasetIntake] = {}
        self._tables: dict[str, Any] = {}

    def receive(self, chunks: Iterable[tuple[str, bytes | memoryview]]) -> Iterator[JobProgress]:
        """Take every chunk of ``chunks``; yield progress (bytes and rows) as data sets arrive."""
        try:
            for dataset_id, data in chunks:
                self.job.check_chunk(dataset_id, len(data))
                arriving = self._arriving.get(dataset_id)
                if arriving is None:
                    if dataset_id in self._tables:
                        raise IntegrityError(f"data set {dataset_id!r} arrived twice")
                    manifest = self.job.manifests[dataset_id]
                    arriving = self._arriving[dataset_id] = DatasetIntake(self._identity, manifest)
                before = arriving.received
                arriving.feed(data)
                if arriving.complete:
                    self._tables[dataset_id] = arriving.finish()
                    del self._arriving[dataset_id]
                    yield JobProgress(
                        "intake",
                        f"data set {dataset_id!r}: received {_mib(arriving.received)} MiB, "
                        f"{arriving.rows} rows, checked against its manifest "
                        f"({len(self._tables)}/{len(self.job.terms.datasets)} data sets)",
                    )
                elif _step(before, arriving) != _step(arriving.received, arriving):
                    yield JobProgress(
                        "intake",
                        f"data set {dataset_id!r}: received {_mib(arriving.received)} of "
                        f"{_mib(arriving.manifest.ciphertext_size)} MiB, {arriving.rows} rows",
                    )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for arriving in self._arriving.values():
            arriving.stop()

    def tables(self) -> list[tuple[str, Any]]:
        """Every data set's table in terms order; IntegrityError for one that did not arrive."""
        named = []
        for dataset_id, _ in self.job.terms.datasets:
            if dataset_id not in self._tables:
                arriving = self._arriving.get(dataset_id)
                if arriving is not None:
                    self.stop()
                    arriving.finish()  # raises: says how it is incomplete
                raise IntegrityError(f"data set {dataset_id!r} was not received")
            named.append((dataset_id, self._tables.pop(dataset_id)))
        return named


def _step(received: int, arriving: DatasetIntake) -> int:
    return received * _REPORTS // max(arriving.manifest.ciphertext_size, 1)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f}"
