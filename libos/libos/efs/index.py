"""The encrypted index of a mount, its commits, and the rollback check against the platform counter.

The index (host file ``index``) maps each path to its host name, file id,
version, size, salt, block size and Merkle root. It is AES-256-GCM under the
index key, its header (policy, key id, version) as associated data.

Versions and rollback. The index version counts commits; a file's version is
the index version that committed it. The platform keeps a monotonic counter
per mount (libos.counter; a file in SIMULATION). Every commit first increments
the counter to the new version, then writes the index (temp file, fsync,
rename), so on load the index version must equal the counter: an older index
put back by the host is refused as rolled back, and so is an older copy of a
file (its header version is below the index's). A crash between the counter
increment and the index rename leaves ``index.next`` at the counter's value;
loading completes that rename. Incrementing first means a version number is
never written into two different indexes, so a stale index written before a
crash can never pass for a newer one.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import logging
import os
import secrets
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag

from libos.counter import MonotonicCounter
from libos.efs.format import (
    FILE_ID_SIZE,
    FORMAT_VERSION,
    HOST_NAME,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    NONCE_SIZE,
    SALT_SIZE,
    STAGED_NAME,
    TAG_SIZE,
    block_count,
    replace_durably,
    write_all,
)
from libos.efs.keys import MountKey
from libos.sealing import POLICIES
from protocols.errors import FormatError, IntegrityError

log = logging.getLogger("libos.efs")

INDEX_MAGIC = b"DEFSI"
# magic, format, policy, key id, version, nonce
_INDEX_HEADER = struct.Struct(">5sBB16sQ12s")
INDEX_NAME = "index"
INDEX_NEXT_NAME = "index.next"
LOCK_NAME = "lock"


@dataclass(frozen=True)
class FileEntry:
    """What the index knows of one file (the current version)."""

    host: str
    file_id: bytes
    version: int
    size: int
    block_size: int
    salt: bytes
    root: bytes

    @property
    def blocks(self) -> int:
        return block_count(self.size, self.block_size)

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "id": self.file_id.hex(),
            "version": self.version,
            "size": self.size,
            "block_size": self.block_size,
            "salt": self.salt.hex(),
            "root": self.root.hex(),
        }

    @classmethod
    def from_json(cls, value: Any) -> FileEntry:
        try:
            entry = cls(
                host=str(value["host"]),
                file_id=bytes.fromhex(value["id"]),
                version=int(value["version"]),
                size=int(value["size"]),
                block_size=int(value["block_size"]),
                salt=bytes.fromhex(value["salt"]),
                root=bytes.fromhex(value["root"]),
            )
        except (KeyError, TypeError, ValueError):
            raise FormatError("an index entry is malformed") from None
        if (
            not HOST_NAME.fullmatch(entry.host)
            or len(entry.file_id) != FILE_ID_SIZE
            or len(entry.salt) != SALT_SIZE
            or len(entry.root) != 32
            or entry.size < 0
            or not MIN_BLOCK_SIZE <= entry.block_size <= MAX_BLOCK_SIZE
        ):
            raise FormatError("an index entry is malformed")
        return entry


@dataclass(frozen=True)
class Index:
    """One version of the mount's state: every file's entry, by path relative to the mount."""

    version: int
    files: dict[str, FileEntry]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MountIndex:
    """The index of one mount in ``host_dir``: loaded, rollback-checked and committed under a lock.

    Safe for threads and for several processes of the same enclave sharing the
    mount: callers hold :meth:`locked` around each operation, and
    :meth:`current` reloads the index when another process committed since.
    """

    def __init__(self, host_dir: Path, key: MountKey, counter: MonotonicCounter) -> None:
        self.host_dir = host_dir
        self.mount_path = key.mount_path
        self.key = key
        self.counter = counter
        self._thread_lock = threading.RLock()
        self._index: Index | None = None
        # An index whose counter increment succeeded but whose write failed in
        # this process: written again before anything else happens.
        self._unwritten: tuple[Index, bytes] | None = None

    def __repr__(self) -> str:
        return f"<MountIndex {self.mount_path} on {self.host_dir} policy={self.key.policy}>"

    def name(self, rel: str) -> str:
        """The in-enclave name of ``rel``, as errors show it."""
        return f"{self.mount_path.rstrip('/')}/{rel}"

    @property
    def has_unwritten_commit(self) -> bool:
        """Whether a commit moved the counter but its index is not written yet."""
        return self._unwritten is not None

    @contextmanager
    def locked(self) -> Iterator[None]:
        # flock excludes other processes (and other EncryptedFS objects: each
        # open() is its own open file description); the RLock excludes threads.
        with self._thread_lock:
            fd = os.open(self.host_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def current(self) -> Index:
        """The current index, reloaded and rollback-checked if the counter moved. Needs the lock."""
        value = self.counter.read()
        if self._unwritten is not None and value == self._unwritten[0].version:
            index, blob = self._unwritten
            self._write_index(blob)
            self._index, self._unwritten = index, None
        if self._index is not None and value == self._index.version:
            return self._index
        self._index = self._load(value)
        self._unwritten = None
        return self._index

    def _load(self, value: int | None) -> Index:
        where = f"encrypted mount {self.mount_path} ({self.host_dir})"
        try:
            blob = (self.host_dir / INDEX_NAME).read_bytes()
        except FileNotFoundError:
            blob = None
        if blob is None:
            if value is None:
                self.counter.create()
                return Index(0, {})
            if value == 0:
                return Index(0, {})
            rolled = self._roll_forward(value)
            if rolled is not None:
                return rolled
            raise IntegrityError(
                f"{where}: its index is missing but the platform counter is at {value}: the host "
                "deleted it (or the enclave died between a counter increment and the index "
                "write); the mount cannot be trusted: restore its newest index"
            )
        index = self._open_index(blob, INDEX_NAME)
        if value is None:
            raise IntegrityError(
                f"{where}: its index is at version {index.version} but the platform has no "
                "monotonic counter for this mount: the counter was deleted or reset, or the "
                "directory comes from another platform; refusing data that may be rolled back"
            )
        if index.version == value:
            return index
        if index.version < value:
            rolled = self._roll_forward(value)
            if rolled is not None:
                return rolled
            raise IntegrityError(
                f"{where} was rolled back: its index is version {index.version} but the "
                f"platform counter is at {value}; the host put back an older copy (or the "
                "enclave died between a counter increment and the index write). Restore the "
                "newest index; an older one is never accepted"
            )
        raise IntegrityError(
            f"{where}: its index is version {index.version}, ahead of the platform counter "
            f"({value}): the counter was reset or rolled back, or the index comes from "
            "another platform"
        )

    def _roll_forward(self, value: int) -> Index | None:
        """Finish a commit that incremented the counter but died before renaming its index."""
        try:
            blob = (self.host_dir / INDEX_NEXT_NAME).read_bytes()
            index = self._open_index(blob, INDEX_NEXT_NAME)
        except (FileNotFoundError, IntegrityError):
            return None
        if index.version != value:
            return None
        replace_durably(self.host_dir / INDEX_NEXT_NAME, self.host_dir / INDEX_NAME)
        log.warning("%s: finished an interrupted commit (version %d)", self.mount_path, value)
        return index

    def _index_header(self, version: int, nonce: bytes) -> bytes:
        policy = POLICIES[self.key.policy]
        return _INDEX_HEADER.pack(
            INDEX_MAGIC, FORMAT_VERSION, policy, self.key.key_id, version, nonce
        )

    def _seal_index(self, index: Index) -> bytes:
        document = {
            "format": FORMAT_VERSION,
            "mount": self.mount_path,
            "version": index.version,
            "files": {path: entry.to_json() for path, entry in index.files.items()},
        }
        plaintext = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        header = self._index_header(index.version, secrets.token_bytes(NONCE_SIZE))
        return header + self.key.seal_index(header, header[-NONCE_SIZE:], plaintext)

    def _open_index(self, blob: bytes, name: str) -> Index:
        where = f"encrypted mount {self.mount_path}: {self.host_dir / name}"
        size = _INDEX_HEADER.size
        if len(blob) < size + TAG_SIZE or not blob.startswith(INDEX_MAGIC):
            raise IntegrityError(f"{where} is not an EFS index: it was altered or replaced")
        _, fmt, policy, key_id, version, nonce = _INDEX_HEADER.unpack_from(blob)
        if fmt != FORMAT_VERSION:
            raise IntegrityError(f"{where} has format {fmt}, not {FORMAT_VERSION}")
        if policy != POLICIES[self.key.policy]:
            other = {v: k for k, v in POLICIES.items()}.get(policy, f"unknown ({policy})")
            raise IntegrityError(
                f"{where} was written under the {other!r} key policy, this mount uses "
                f"{self.key.policy!r}: mount it with key_policy = {other!r}"
            )
        if not hmac.compare_digest(key_id, self.key.key_id):
            raise IntegrityError(
                f"{where} was written under another key: by another enclave "
                f"({self.key.policy} policy: "
                + (
                    "only the exact image that wrote a mount can open it; use "
                    "key_policy = 'mrsigner' for data that must survive upgrades"
                    if self.key.policy == "mrenclave"
                    else "only images of the same signer can open it"
                )
                + "), for another mount path, or on another platform"
            )
        try:
            plaintext = self.key.open_index(blob[:size], nonce, blob[size:])
        except InvalidTag:
            raise IntegrityError(f"{where} was altered: its authentication tag fails") from None
        try:
            document = json.loads(plaintext)
            files = {str(p): FileEntry.from_json(e) for p, e in document["files"].items()}
            ok = document["version"] == version and document["mount"] == self.mount_path
        except (ValueError, KeyError, TypeError, AttributeError, FormatError):
            ok = False
        if not ok:
            raise IntegrityError(f"{where} authenticates but its content is malformed")
        return Index(version, files)

    def commit(self, index: Index) -> None:
        """Make ``index`` the mount's state: counter first, then the index file. Needs the lock."""
        blob = self._seal_index(index)
        reserved = self.counter.increment()
        if reserved != index.version:
            # Only a writer that ignores the mount lock (or the host moving the
            # SIMULATION counter) gets here; the index on disk is unchanged.
            raise IntegrityError(
                f"encrypted mount {self.mount_path}: the platform counter moved to {reserved} "
                f"while committing version {index.version}; reopen the mount"
            )
        try:
            self._write_index(blob)
        except BaseException:
            self._unwritten = (index, blob)
            raise
        self._index = index

    def _write_index(self, blob: bytes) -> None:
        staged = self.host_dir / INDEX_NEXT_NAME
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(fd, memoryview(blob))
            os.fsync(fd)
        finally:
            os.close(fd)
        replace_durably(staged, self.host_dir / INDEX_NAME)

    def remove_blob(self, host: str) -> None:
        """Delete the host file ``host`` (a replaced or removed version), if it is there."""
        try:
            os.unlink(self.host_dir / host)
        except FileNotFoundError:
            pass

    def collect_garbage(self) -> None:
        """Delete blobs no index refers to and staged files of dead writers. Needs the lock."""
        assert self._index is not None
        referenced = {entry.host for entry in self._index.files.values()}
        for child in self.host_dir.iterdir():
            name = child.name
            staged = STAGED_NAME.fullmatch(name)
            stale = (
                (HOST_NAME.fullmatch(name) is not None and name not in referenced)
                or (staged is not None and not _pid_alive(int(staged.group(1))))
                or name == INDEX_NEXT_NAME
            )
            if stale:
                log.info("%s: removing unreferenced host file %s", self.mount_path, name)
                child.unlink(missing_ok=True)
