"""A content-addressed blob directory for ciphertext: ``<root>/ab/cdef…``.

A blob's name is the SHA-256 of its bytes. Writes go to a temporary file in
the blob root (same file system, since the name is known only at the end),
are fsynced, then renamed into place, so a crash
never leaves a half-written blob under a real name. Reads re-hash the
content as they stream it and end with an error if it does not match its
name: the disk is not trusted either. A reader learns that only after the
last piece, so whoever consumes a blob checks what it received itself — the
enclave checks a data set against the SHA-256 in its signed manifest, a party
an output against the enclave's signed result statement.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import queue
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from protocols.durable import fsync_dir
from protocols.errors import IntegrityError, NotFound, WrongState
from protocols.stream import CHUNK_SIZE

_NAME = re.compile(r"^[0-9a-f]{64}$")
# A resumable upload's temporary file in the blob folder (coordinator.handler.uploads).
PARTIAL_PREFIX = ".partial-"
_PARTIAL = re.compile(r"^\.partial-[0-9a-f]{32}$")


def _check_name(sha256: str) -> str:
    if not isinstance(sha256, str) or not _NAME.match(sha256):
        raise NotFound(f"no blob {str(sha256)[:80]!r}: a blob name is 64 lowercase hex digits")
    return sha256


class BlobWriter:
    """Write one blob incrementally; nothing is visible until :meth:`commit`.

    With ``expected_sha256``/``expected_size`` the writer refuses to commit
    content that differs, and refuses to grow past ``expected_size`` at all.

    The pieces are hashed and written to the file on a thread of the writer's
    own, a few pieces behind :meth:`write`, so that receiving the next piece
    (TLS, gRPC) overlaps with hashing and writing this one: an upload through
    the coordinator then costs about the slowest of the three, not their sum
    (experiments/bench_upload.py). A failure of that thread (a full disk) is
    raised by the next :meth:`write` or by :meth:`commit`.
    """

    # Pieces (of up to CHUNK_SIZE bytes) queued ahead of the file: bounded memory.
    WRITE_AHEAD = 8

    def __init__(
        self,
        store: BlobStore,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
        what: str = "blob",
    ) -> None:
        self._store = store
        self._expected_sha256 = expected_sha256
        self._expected_size = expected_size
        self._what = what
        self._hash = hashlib.sha256()
        self._size = 0
        # Created and locked under the folder's shared lock, so a cleanup (which takes
        # it exclusively) never sees this file unlocked; the file's own lock is held
        # until it is closed: a live write is never taken for a stale one.
        with store.folder_lock(fcntl.LOCK_SH):
            fd, name = tempfile.mkstemp(prefix=".incoming-", dir=store.root)
            fcntl.flock(fd, fcntl.LOCK_EX)
        self._tmp = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._pending: queue.Queue[bytes | None] = queue.Queue(self.WRITE_AHEAD)
        self._failure: BaseException | None = None
        self._drainer: threading.Thread | None = None

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise ValueError("blob writer is closed")
        if self._expected_size is not None and self._size + len(data) > self._expected_size:
            self.abort()
            raise IntegrityError(
                f"{self._what} is longer than the {self._expected_size} bytes it must have"
            )
        if self._failure is not None:
            self._fail()
        if self._drainer is None:
            self._drainer = threading.Thread(
                target=self._drain, args=(self._file,), name="blob-writer", daemon=True
            )
            self._drainer.start()
        self._size += len(data)
        self._pending.put(data)

    def _drain(self, file: BinaryIO) -> None:
        """The writer's thread: hash and write each queued piece until None."""
        while (data := self._pending.get()) is not None:
            if self._failure is None:  # after a failure, only empty the queue
                try:
                    self._hash.update(data)
                    file.write(data)
                    self._written(file, len(data))
                except BaseException as exc:
                    self._failure = exc

    def _written(self, file: BinaryIO, size: int) -> None:
        """Called on the writer's thread after each piece is written (a hook)."""

    def _settle(self) -> None:
        """Wait until every queued piece is hashed and written."""
        if self._drainer is not None:
            self._pending.put(None)
            self._drainer.join()
            self._drainer = None

    def _fail(self) -> None:
        failure = self._failure
        self.abort()
        assert failure is not None
        raise failure

    def commit(self) -> tuple[str, int]:
        """Make the blob visible under its SHA-256; return (sha256, size)."""
        if self._file is None:
            raise ValueError("blob writer is closed")
        self._settle()
        if self._failure is not None:
            self._fail()
        sha256 = self._hash.hexdigest()
        if (self._expected_sha256 is not None and sha256 != self._expected_sha256) or (
            self._expected_size is not None and self._size != self._expected_size
        ):
            self.abort()
            raise IntegrityError(
                f"{self._what} does not match: got {self._size} bytes with SHA-256 "
                f"{sha256[:16]}…, expected {self._expected_size} bytes with SHA-256 "
                f"{(self._expected_sha256 or '?')[:16]}…"
            )
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        path = self._store.path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._tmp, path)
        fsync_dir(path.parent)
        return sha256, self._size

    def abort(self) -> None:
        self._settle()
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()  # a no-op after commit


class UploadBusy(WrongState):
    """A partial upload's file is held by another live stream (an earlier connection)."""


class PartialWriter(BlobWriter):
    """Continue a blob in a named temporary file that outlives calls and restarts.

    The file (``name`` in the blob folder, created 0600 if missing) is locked
    for as long as this writer is open: a second stream of the same upload is
    refused (:class:`UploadBusy`), and no cleanup takes it for stale. It is cut
    to ``offset`` bytes, whose SHA-256 is computed again from the file, and
    the pieces written after them. Every ``sync_every`` bytes, and when the
    stream is suspended (:meth:`suspend`), the file is fsynced and
    ``on_synced(total)`` is called: only synced bytes are ever acknowledged, so
    a crash of the machine loses nothing acknowledged. :meth:`commit` moves
    the file into place under its SHA-256 as :class:`BlobWriter` does.
    """

    def __init__(
        self,
        store: BlobStore,
        name: str,
        offset: int,
        expected_sha256: str,
        expected_size: int,
        on_synced: Callable[[int], None],
        what: str = "blob",
        sync_every: int = 32 << 20,
    ) -> None:
        if not _PARTIAL.match(name):
            raise ValueError(f"not a partial upload file name: {name!r}")
        path = store.root / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UploadBusy(
                f"{what} is still being received on an earlier connection: try again in a "
                "few seconds"
            ) from None
        try:
            held = os.fstat(fd).st_size
            if offset > held:
                raise ShortPartial(held)
            os.ftruncate(fd, offset)
            digest = hashlib.sha256()
            os.lseek(fd, 0, os.SEEK_SET)
            left = offset
            while left:
                piece = os.read(fd, min(left, CHUNK_SIZE))
                if not piece:
                    raise ShortPartial(offset - left)
                digest.update(piece)
                left -= len(piece)
        except BaseException:
            os.close(fd)
            raise
        self._store = store
        self._expected_sha256 = expected_sha256
        self._expected_size = expected_size
        self._what = what
        self._hash = digest
        self._size = offset
        self._tmp = path
        self._file = os.fdopen(fd, "r+b")
        self._file.seek(offset)
        self._pending = queue.Queue(self.WRITE_AHEAD)
        self._failure = None
        self._drainer = None
        self._fd = fd
        self._written_total = offset  # bytes handed to the file by the writer's thread
        self._unsynced = 0
        self._synced = offset
        self._sync_every = sync_every
        self._on_synced = on_synced
        # fsync and the acknowledgement run on a thread of their own, so that receiving
        # and writing go on meanwhile: the target it syncs up to, and when to stop.
        self._sync_wanted = threading.Condition()
        self._sync_target = offset
        self._sync_stop = False
        self._syncer: threading.Thread | None = None

    @property
    def synced(self) -> int:
        return self._synced

    def _written(self, file: BinaryIO, size: int) -> None:
        self._written_total += size
        self._unsynced += size
        if self._unsynced >= self._sync_every:
            file.flush()  # into the kernel: the syncer's fsync then covers it
            self._unsynced = 0
            with self._sync_wanted:
                self._sync_target = self._written_total
                self._sync_wanted.notify()
            if self._syncer is None:
                self._syncer = threading.Thread(
                    target=self._sync_loop, name="blob-syncer", daemon=True
                )
                self._syncer.start()

    def _sync_loop(self) -> None:
        """The syncer's thread: fsync up to the latest target, then acknowledge it."""
        while True:
            with self._sync_wanted:
                while self._sync_target <= self._synced and not self._sync_stop:
                    self._sync_wanted.wait()
                if self._sync_target <= self._synced:
                    return
                target = self._sync_target
            try:
                os.fsync(self._fd)
                self._synced = target
                self._on_synced(target)
            except BaseException as exc:
                self._failure = exc
                return

    def _stop_syncer(self) -> None:
        """Let the syncer finish what it was asked, and end it."""
        if self._syncer is not None:
            with self._sync_wanted:
                self._sync_stop = True
                self._sync_wanted.notify()
            self._syncer.join()
            self._syncer = None

    def commit(self) -> tuple[str, int]:
        self._settle()
        self._stop_syncer()
        return super().commit()

    def abort(self) -> None:
        self._settle()
        self._stop_syncer()
        super().abort()

    def suspend(self) -> int:
        """Keep what arrived for a later stream: sync and acknowledge it, close the file
        (releasing its lock); the bytes held. After a write failure only what was
        acknowledged before it counts (the next stream cuts the file there)."""
        self._settle()
        self._stop_syncer()
        if self._file is not None:
            try:
                if self._failure is None and self._written_total > self._synced:
                    self._file.flush()
                    os.fsync(self._fd)
                    self._synced = self._written_total
                    self._on_synced(self._synced)
            finally:
                self._file.close()
                self._file = None
        return self._synced


class ShortPartial(IntegrityError):
    """A partial upload's file holds fewer bytes than the coordinator recorded."""

    def __init__(self, held: int) -> None:
        super().__init__(f"the partial upload's file holds only {held} bytes")
        self.held = held


class BlobStore:
    """Content-addressed storage of opaque bytes under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_incoming()

    def _remove_stale_incoming(self) -> None:
        """Drop temp files of writes cut off by a crash, at start.

        A live write (of another coordinator sharing this folder) holds an
        exclusive lock on its file, so only files nobody holds are removed.
        """
        with self.folder_lock(fcntl.LOCK_EX):
            for tmp in self.root.glob(".incoming-*"):
                try:
                    fd = os.open(tmp, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live write
                else:
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
                finally:
                    os.close(fd)

    @contextlib.contextmanager
    def folder_lock(self, mode: int) -> Iterator[None]:
        """The blob folder's lock: shared while a writer creates its file, exclusive
        while stale files are removed."""
        # Beside the folder, not in it: the folder holds blobs and upload files only.
        lock = self.root.with_name(self.root.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    def path(self, sha256: str) -> Path:
        name = _check_name(sha256)
        return self.root / name[:2] / name[2:]

    def writer(
        self,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
        what: str = "blob",
    ) -> BlobWriter:
        return BlobWriter(self, expected_sha256, expected_size, what)

    def put_stream(
        self,
        chunks: Iterable[bytes],
        expected_sha256: str | None = None,
        expected_size: int | None = None,
        what: str = "blob",
    ) -> tuple[str, int]:
        """Store the concatenation of ``chunks``; return (sha256, size).

        If any expectation fails (or ``chunks`` raises), nothing is stored.
        """
        with self.writer(expected_sha256, expected_size, what) as writer:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit()

    def put(self, data: bytes) -> tuple[str, int]:
        return self.put_stream([data])

    def exists(self, sha256: str) -> bool:
        try:
            return self.path(sha256).is_file()
        except NotFound:
            return False

    def iter_chunks(self, sha256: str, size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Yield the blob in pieces of ``size`` bytes, hashing them as they go; raise
        IntegrityError after the last piece if the content does not match its name.

        One read of the file, not two: a corrupted blob is reported at its end
        (its consumer checks the content itself; see the module's docstring).
        """
        path = self.path(sha256)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise NotFound(f"no blob {sha256[:16]}… in the blob store") from None
        with handle:
            digest = hashlib.sha256()
            while piece := handle.read(size):
                digest.update(piece)
                yield piece
            if digest.hexdigest() != sha256:
                raise IntegrityError(
                    f"blob {sha256[:16]}… is corrupted on disk (its content no longer "
                    "hashes to its name); restore it from a backup or re-upload it"
                )

    def open(self, sha256: str) -> Iterator[bytes]:
        """Alias of :meth:`iter_chunks` with the default piece size."""
        return self.iter_chunks(sha256)

    def read(self, sha256: str) -> bytes:
        return b"".join(self.iter_chunks(sha256))

    def remove_partial(self, name: str, unless_busy: bool = True) -> bool:
        """Delete a partial upload's file; with ``unless_busy``, not while a stream holds
        it (False then). True if it is gone."""
        if not _PARTIAL.match(name):
            raise ValueError(f"not a partial upload file name: {name!r}")
        path = self.root / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return True
        try:
            if unless_busy:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
            path.unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)

    def partial_names(self) -> list[str]:
        """Names of the partial upload files in the folder."""
        return sorted(
            p.name for p in self.root.glob(PARTIAL_PREFIX + "*") if _PARTIAL.match(p.name)
        )

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha256).unlink()
