"""Writing an encrypted file: a new version encrypted into a staged host file, committed on close.

Atomic writes. A new version is written to a staged file, renamed to its
final name, and only then committed to the index; the old version's blob is
deleted after the commit. A crash at any point before the counter increment
leaves the old version readable; files no index refers to are deleted the
next time the mount is opened.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Callable

from libos.efs.format import (
    FILE_HEADER,
    FILE_MAGIC,
    FORMAT_VERSION,
    HEADER_SIZE,
    SALT_SIZE,
    TAG_SIZE,
    aad,
    block_count,
    merkle_root,
    nonce,
    write_all,
)
from libos.efs.index import FileEntry, MountIndex

# Encrypt and write this much at a time: big writes, one reusable buffer.
_BATCH_BYTES = 4 * 1024 * 1024


class StagedFile:
    """A new version being written: encrypted block by block into a staged host file."""

    def __init__(self, mount: MountIndex, rel: str, block_size: int) -> None:
        self.block_size = block_size
        self.salt = secrets.token_bytes(SALT_SIZE)
        self.file_id = mount.key.file_id(rel)
        self._aes, self._mac_key = mount.key.file_keys(self.file_id, self.salt)
        # The name's shape is format.STAGED_NAME: the index collects files of dead writers.
        self.path = mount.host_dir / f"{os.getpid()}-{secrets.token_hex(8)}.staged"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.lseek(self._fd, HEADER_SIZE, os.SEEK_SET)
        self._batch = max(1, _BATCH_BYTES // self.block_size)
        self._out = bytearray()  # grown on demand: a small file needs a small buffer
        self._tags = bytearray()
        self._pending = bytearray()
        self.size = 0
        self._blocks = 0
        self._open = True

    @property
    def written(self) -> int:
        """Bytes accepted so far (encrypted, or waiting to fill a block)."""
        return self.size + len(self._pending)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        count = len(view)
        bs = self.block_size
        if self._pending:
            take = min(bs - len(self._pending), len(view))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < bs:
                return count
            self._encrypt(memoryview(self._pending))
            self._pending = bytearray()
        whole = len(view) - len(view) % bs
        if whole:
            self._encrypt(view[:whole])
        if whole < len(view):
            self._pending = bytearray(view[whole:])
        return count

    def _encrypt(self, view: memoryview) -> None:
        """Encrypt ``view`` (whole blocks; only the last call may end in a short block)."""
        bs = self.block_size
        blocks = min(self._batch, block_count(len(view), bs))
        needed = min(len(view), blocks * bs) + blocks * TAG_SIZE
        if len(self._out) < needed:
            self._out = bytearray(needed)
        out = memoryview(self._out)
        done = 0
        while done < len(view):
            chunk = view[done : done + self._batch * bs]
            used = 0
            for start in range(0, len(chunk), bs):
                length = min(bs, len(chunk) - start)
                i = self._blocks
                self._aes.encrypt_into(
                    nonce(i),
                    chunk[start : start + length],
                    aad(self.file_id, i),
                    out[used : used + length + TAG_SIZE],
                )
                used += length + TAG_SIZE
                self._tags += out[used - TAG_SIZE : used]
                self._blocks += 1
            write_all(self._fd, out[:used])
            done += len(chunk)
            self.size += len(chunk)

    def finish(self, version: int, host: str) -> FileEntry:
        """Encrypt the last short block, write the header for ``version``, fsync, close."""
        if self._pending:
            self._encrypt(memoryview(self._pending))
            self._pending = bytearray()
        root = merkle_root(self._tags, self._blocks)
        signed = FILE_HEADER.pack(
            FILE_MAGIC,
            FORMAT_VERSION,
            0,
            self.block_size,
            self.file_id,
            version,
            self.size,
            self.salt,
            root,
        )
        os.pwrite(self._fd, signed + hmac.digest(self._mac_key, signed, "sha256"), 0)
        os.fsync(self._fd)
        self.close()
        return FileEntry(host, self.file_id, version, self.size, self.block_size, self.salt, root)

    def close(self) -> None:
        if self._open:
            self._open = False
            os.close(self._fd)

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class EncryptedFileWriter:
    """A file of the mount opened with "wb".

    Nothing is visible until :meth:`close`, which replaces the file atomically.
    Leaving a ``with`` block by an exception, or dropping the writer without
    closing it, discards what was written: a half-written file never commits.
    """

    def __init__(
        self,
        mount: MountIndex,
        rel: str,
        block_size: int,
        commit: Callable[[str, StagedFile], None],
    ) -> None:
        self._commit = commit
        self._rel = rel
        self.name = mount.name(rel)
        self._size = 0
        self._staged: StagedFile | None = StagedFile(mount, rel, block_size)

    def __repr__(self) -> str:
        return f"<EncryptedFileWriter {self.name}{' closed' if self.closed else ''}>"

    @property
    def closed(self) -> bool:
        return self._staged is None

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        staged = self._staged
        return self._size if staged is None else staged.written

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._staged is None:
            raise ValueError(f"write to closed file {self.name}")
        return self._staged.write(data)

    def flush(self) -> None:
        """Nothing to do: the content becomes visible, all at once, on close()."""

    def close(self) -> None:
        """Commit the new content (atomically replacing the old). Idempotent."""
        staged = self._staged
        if staged is None:
            return
        self._staged = None
        self._size = staged.written
        try:
            self._commit(self._rel, staged)
        except BaseException:
            staged.discard()
            raise

    def abort(self) -> None:
        """Discard everything written; the file keeps its previous content."""
        staged = self._staged
        if staged is not None:
            self._staged = None
            self._size = 0
            staged.discard()

    def __enter__(self) -> EncryptedFileWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        if getattr(self, "_staged", None) is not None:
            self.abort()
