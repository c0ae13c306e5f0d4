"""The file system operations of one encrypted mount: paths, reads, writes, listing, removal.

:class:`EncryptedFS` is what ``runtime.current().mount(path)`` returns. It
checks in-enclave paths and turns each operation into reads of verified
blobs (libos.efs.reader), staged writes (libos.efs.writer) and commits of the
index (libos.efs.index).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn, overload

from libos.counter import MonotonicCounter
from libos.efs.format import DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, replace_durably
from libos.efs.index import FileEntry, Index, MountIndex
from libos.efs.keys import MountKey
from libos.efs.reader import EncryptedFileReader, check_blob, read_all
from libos.efs.writer import EncryptedFileWriter, StagedFile
from protocols.errors import DetenteError, FormatError, IntegrityError

_MAX_PATH = 4096
_MAX_COMPONENT = 255


class EfsFileNotFoundError(DetenteError, FileNotFoundError):
    """The path does not exist in the encrypted mount."""


class EfsIsADirectoryError(DetenteError, IsADirectoryError):
    """A file operation named a directory of the encrypted mount."""


class EfsNotADirectoryError(DetenteError, NotADirectoryError):
    """A directory operation (or a path below it) named a file of the encrypted mount."""


@dataclass(frozen=True)
class FileInfo:
    """What ``stat`` reports: the in-enclave path, the plaintext size and the version."""

    path: str
    size: int
    version: int


class EncryptedFS:
    """One encrypted mount: in-enclave paths over ciphertext in ``host_dir``.

    Safe for threads and for several processes of the same enclave sharing the
    mount: every operation takes the mount's lock and reloads the index when
    another process committed since.
    """

    def __init__(
        self,
        host_dir: Path,
        key: MountKey,
        counter: MonotonicCounter,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE or block_size & (block_size - 1) != 0:
            raise FormatError(
                f"EFS block size {block_size} is not a power of two from {MIN_BLOCK_SIZE} "
                f"to {MAX_BLOCK_SIZE}"
            )
        self.host_dir = Path(host_dir)
        self.mount_path = key.mount_path
        self.block_size = block_size
        self._key = key
        self._mount = MountIndex(self.host_dir, key, counter)
        self.host_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._mount.locked():
            self._mount.current()
            self._mount.collect_garbage()

    def __repr__(self) -> str:
        return f"<EncryptedFS {self.mount_path} on {self.host_dir} policy={self._key.policy}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("EncryptedFS holds mount keys and cannot be pickled")

    # --- public API ---------------------------------------------------------

    @property
    def version(self) -> int:
        """The index version (= the platform counter) as of the last operation."""
        with self._mount.locked():
            return self._mount.current().version

    def write_bytes(
        self, path: str | os.PathLike[str], data: bytes | bytearray | memoryview
    ) -> int:
        """Replace ``path`` with ``data`` atomically; return the number of bytes written."""
        rel = self._file_path(path)
        writer = self._writer(rel)
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        return writer.tell()

    def read_bytes(self, path: str | os.PathLike[str]) -> bytes:
        """The whole content of ``path``; IntegrityError if the host changed anything."""
        rel = self._file_path(path)
        entry, fd = self._open_blob(rel)
        try:
            check_blob(self._mount, rel, entry, fd)
            return read_all(self._mount, rel, entry, fd)
        finally:
            os.close(fd)

    @overload
    def open(
        self, path: str | os.PathLike[str], mode: Literal["rb"] = "rb"
    ) -> EncryptedFileReader: ...

    @overload
    def open(self, path: str | os.PathLike[str], mode: Literal["wb"]) -> EncryptedFileWriter: ...

    def open(
        self, path: str | os.PathLike[str], mode: str = "rb"
    ) -> EncryptedFileReader | EncryptedFileWriter:
        """A streaming reader ("rb") or writer ("wb": replaces the file atomically on close)."""
        rel = self._file_path(path)
        if mode == "rb":
            entry, fd = self._open_blob(rel)
            try:
                check_blob(self._mount, rel, entry, fd)
            except BaseException:
                os.close(fd)
                raise
            return EncryptedFileReader(self._mount, rel, entry, fd)
        if mode == "wb":
            with self._mount.locked():
                self._check_can_write(self._mount.current(), rel)
            return self._writer(rel)
        raise FormatError(f"EFS open mode {mode!r} is not supported; use 'rb' or 'wb'")

    def exists(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is a file or a directory (a prefix of some file) of the mount."""
        rel = self._relative(path)
        with self._mount.locked():
            files = self._mount.current().files
        if rel == "" or rel in files:
            return True
        prefix = rel + "/"
        return any(name.startswith(prefix) for name in files)

    def is_file(self, path: str | os.PathLike[str]) -> bool:
        rel = self._relative(path)
        with self._mount.locked():
            return rel in self._mount.current().files

    def listdir(self, path: str | os.PathLike[str] = "") -> list[str]:
        """Sorted names directly under directory ``path`` (the mount root by default)."""
        rel = self._relative(path)
        with self._mount.locked():
            files = self._mount.current().files
        if rel in files:
            raise EfsNotADirectoryError(f"{self._name(rel)} is a file, not a directory")
        prefix = rel + "/" if rel else ""
        names = {name[len(prefix) :].split("/", 1)[0] for name in files if name.startswith(prefix)}
        if rel and not names:
            raise EfsFileNotFoundError(f"no directory {self._name(rel)} in the encrypted mount")
        return sorted(names)

    def files(self) -> list[str]:
        """Every file of the mount, as sorted paths relative to it."""
        with self._mount.locked():
            return sorted(self._mount.current().files)

    def stat(self, path: str | os.PathLike[str]) -> FileInfo:
        rel = self._file_path(path)
        with self._mount.locked():
            entry = self._entry(self._mount.current(), rel)
        return FileInfo(self._name(rel), entry.size, entry.version)

    def remove(self, path: str | os.PathLike[str]) -> None:
        """Delete file ``path`` (committed like a write: atomic, counted, rollback-checked)."""
        rel = self._file_path(path)
        with self._mount.locked():
            index = self._mount.current()
            entry = self._entry(index, rel)
            files = dict(index.files)
            del files[rel]
            self._mount.commit(Index(index.version + 1, files))
            self._mount.remove_blob(entry.host)

    # --- paths ----------------------------------------------------------------

    def _name(self, rel: str) -> str:
        """The in-enclave name of ``rel``, as errors show it."""
        return self._mount.name(rel)

    def _relative(self, path: str | os.PathLike[str]) -> str:
        text = os.fspath(path)
        if not isinstance(text, str):
            raise FormatError(f"EFS paths are text, got {text!r}")
        if text.startswith("/"):
            root = self.mount_path.rstrip("/")
            if text in (root, root + "/"):
                return ""
            if not text.startswith(root + "/"):
                raise FormatError(
                    f"path {text!r} is outside the mount {self.mount_path}; use a path relative "
                    f"to the mount or one under {root}/"
                )
            text = text[len(root) + 1 :]
        text = text.removesuffix("/")
        if text == "":
            return ""
        parts = text.split("/")
        if len(text) > _MAX_PATH or any(
            p in ("", ".", "..") or "\0" in p or len(p.encode()) > _MAX_COMPONENT for p in parts
        ):
            raise FormatError(
                f"path {path!r} is not a valid EFS path: use '/'-separated names without "
                "'.', '..', empty names or NUL, each at most 255 bytes"
            )
        return text

    def _file_path(self, path: str | os.PathLike[str]) -> str:
        rel = self._relative(path)
        if rel == "":
            raise EfsIsADirectoryError(f"{self.mount_path} is the mount's root directory")
        return rel

    def _entry(self, index: Index, rel: str) -> FileEntry:
        entry = index.files.get(rel)
        if entry is not None:
            return entry
        if any(name.startswith(rel + "/") for name in index.files):
            raise EfsIsADirectoryError(f"{self._name(rel)} is a directory")
        raise EfsFileNotFoundError(f"no file {self._name(rel)} in the encrypted mount")

    def _check_can_write(self, index: Index, rel: str) -> None:
        parts = rel.split("/")
        for k in range(1, len(parts)):
            parent = "/".join(parts[:k])
            if parent in index.files:
                raise EfsNotADirectoryError(
                    f"cannot write {self._name(rel)}: {self._name(parent)} is a file"
                )
        if any(name.startswith(rel + "/") for name in index.files):
            raise EfsIsADirectoryError(f"cannot write {self._name(rel)}: it is a directory")

    # --- reading and writing blobs --------------------------------------------

    def _open_blob(self, rel: str) -> tuple[FileEntry, int]:
        with self._mount.locked():
            entry = self._entry(self._mount.current(), rel)
            try:
                fd = os.open(self.host_dir / entry.host, os.O_RDONLY)
            except FileNotFoundError:
                raise IntegrityError(
                    f"{self._name(rel)}: its encrypted file is missing from {self.host_dir}; "
                    "the host deleted or renamed it"
                ) from None
        return entry, fd

    def _writer(self, rel: str) -> EncryptedFileWriter:
        return EncryptedFileWriter(self._mount, rel, self.block_size, self._commit_file)

    def _commit_file(self, rel: str, staged: StagedFile) -> None:
        with self._mount.locked():
            index = self._mount.current()
            self._check_can_write(index, rel)
            version = index.version + 1
            host = self._key.host_name(rel, staged.salt)
            entry = staged.finish(version, host)
            target = self.host_dir / host
            replace_durably(staged.path, target)
            old = index.files.get(rel)
            files = dict(index.files)
            files[rel] = entry
            try:
                self._mount.commit(Index(version, files))
            except BaseException:
                if not self._mount.has_unwritten_commit:
                    # The counter did not move: the old index stands; drop the new blob.
                    target.unlink(missing_ok=True)
                raise
            if old is not None:
                self._mount.remove_blob(old.host)
