"""The sealed form of a data set, written to a private file as it is produced.

A party seals its table batch by batch (protocols/SPEC.md §5) into a spool
file in its home, hashing the ciphertext as it goes, so that the manifest —
which names the ciphertext's size and SHA-256 — can be signed before the
first byte is sent and the upload never holds the data set in memory.

The spool folder is mode 0700 and each file is created exclusively with mode
0600, named ``upload-PID-RANDOM.sealed``: a crash leaves nothing another user
can read (and only ciphertext under a key that died with the process); the
next upload from the same home removes the files of processes that are gone.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from protocols import stream

_PREFIX = "upload-"
_SUFFIX = ".sealed"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_stale(folder: Path) -> None:
    """Remove spool files left by processes that no longer run (they crashed)."""
    if not folder.is_dir():
        return
    for path in folder.glob(f"{_PREFIX}*{_SUFFIX}"):
        pid = path.name[len(_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            path.unlink(missing_ok=True)


class SealedSpool:
    """A file-like sink that seals what is written to it into a private spool file.

    Write plaintext (:meth:`write`, as :class:`pyarrow.PythonFile` does), call
    :meth:`finish` for the ciphertext's size and SHA-256, then read it back in
    pieces (:meth:`pieces`). The file is removed by :meth:`remove` (and on
    leaving a ``with`` block, errors included).
    """

    def __init__(
        self,
        folder: Path,
        key: bytes,
        associated_data: bytes,
        chunk_size: int = stream.CHUNK_SIZE,
    ) -> None:
        self._sealer = stream.StreamSealer(key, associated_data, chunk_size)
        self._chunk_size = chunk_size
        self._hash = hashlib.sha256()
        self.size = 0  # ciphertext bytes written
        self.plaintext_size = 0  # plaintext bytes written
        self.sha256 = ""
        self._finished = False
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        remove_stale(folder)
        self.path = folder / f"{_PREFIX}{os.getpid()}-{secrets.token_hex(8)}{_SUFFIX}"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._file = os.fdopen(os.open(self.path, flags, 0o600), "w+b")
        self._put(self._sealer.header)

    # The file protocol pyarrow.PythonFile uses.
    closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        # Pieces of at most one chunk: the sealer then never holds more than two.
        for start in range(0, len(view), self._chunk_size):
            for chunk in self._sealer.update(bytes(view[start : start + self._chunk_size])):
                self._put(chunk)
        self.plaintext_size += len(view)
        return len(view)

    def flush(self) -> None:
        pass

    def _put(self, sealed: bytes) -> None:
        self._file.write(sealed)
        self._hash.update(sealed)
        self.size += len(sealed)

    def finish(self) -> tuple[int, str]:
        """Seal the last chunk; return the ciphertext's size and SHA-256 (hex)."""
        self._put(self._sealer.finish())
        self._file.flush()
        self._finished = True
        self.sha256 = self._hash.hexdigest()
        return self.size, self.sha256

    def pieces(self, size: int = stream.CHUNK_SIZE) -> Iterator[bytes]:
        """The ciphertext, from the start, in pieces of ``size`` bytes (the last may be less)."""
        if not self._finished:
            raise ValueError("finish the spool before reading it")
        self._file.seek(0)
        while piece := self._file.read(size):
            yield piece

    def plaintext_within(self, ciphertext_bytes: int) -> int:
        """How many plaintext bytes the first ``ciphertext_bytes`` of the spool carry whole
        (complete chunks only: a reader can open no less)."""
        if self._finished and ciphertext_bytes >= self.size:
            return self.plaintext_size
        sealed_chunk = self._chunk_size + stream.TAG_SIZE
        chunks = max(0, ciphertext_bytes - stream.HEADER.size) // sealed_chunk
        return min(chunks * self._chunk_size, self.plaintext_size)

    def close(self) -> None:
        """The file protocol's close (pyarrow may call it): the spool stays until removed."""

    def remove(self) -> None:
        """Close and remove the spool file."""
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> SealedSpool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()
