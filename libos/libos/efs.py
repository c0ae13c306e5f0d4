"""The encrypted file system: files the host stores but can neither read, name nor alter.

A mount is a host directory. The enclave sees paths and plaintext; the host
sees only opaque file names, ciphertext, sizes and access times::

    fs = runtime.current().mount("/data")
    fs.write_bytes("models/m1.json", data)      # atomic: all of it or the old file
    fs.read_bytes("models/m1.json")             # IntegrityError on any change
    with fs.open("checkpoints/round-40.bin", "wb") as f: ...   # streaming, for large files

Keys (HKDF-SHA256, RFC 5869). The mount key derives from the platform's
sealing secret and the enclave's identity under the mount's key policy, as
a sealing key does (SGX EGETKEY with KEYPOLICY MRENCLAVE or MRSIGNER)::

    mount key = HKDF(sealing secret, info = "detente/v1 efs mount " policy " " identity " " path)

so another MRENCLAVE (mrenclave policy) or another signer (mrsigner policy),
or another platform, derives another key and cannot open the mount. From the
mount key come the name key, the index key, the key id and the counter name;
each write of a file draws a fresh 32-byte salt and derives that version's
keys::

    file keys = HKDF(mount key, salt, info = "detente/v1 efs file " file id)
              -> AES-256-GCM key ‖ HMAC-SHA256 key

Blob layout of one file (one host file per version, integers big-endian)::

    magic "DEFSF" 5 | format 1 (1) | reserved 0 (2) | block size (4) | file id (16)
    | version (8) | size (8) | salt (32) | Merkle root (32) | HMAC-SHA256 of all before (32)
    then, for each block i of ceil(size / block size): AES-256-GCM(block i) ‖ tag i (16)

Block i uses nonce = i (8 bytes) ‖ 0 (4 bytes), unique because each version
has its own key, and associated data = file id ‖ i, so a block moved within a
file or between files fails its tag. The Merkle root is the RFC 6962 §2.1
Merkle Tree Hash over the block tags, so it commits to every block, their
order and their number; it is in the MAC'd header and in the index.

Names. The file id is HMAC(name key, "file id" ‖ path) and the host name of a
version is HMAC(name key, "host name" ‖ path ‖ salt): keyed hashes, so the
host cannot guess a path from a name, and a new version never reuses a name.

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

Atomic writes. A new version is written to a staged file, renamed to its
final name, and only then committed to the index; the old version's blob is
deleted after the commit. A crash at any point before the counter increment
leaves the old version readable; files no index refers to are deleted the
next time the mount is opened.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import io
import json
import logging
import os
import re
import secrets
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, overload

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from libos.counter import MonotonicCounter, fsync_directory
from libos.sealing import POLICIES
from protocols.errors import DetenteError, FormatError, IntegrityError

log = logging.getLogger(__name__)

# 64 KiB blocks: large enough that the per-block Python work is small next to
# the AES-GCM time, and below glibc's initial mmap threshold (128 KiB), so the
# per-block buffers come from the heap instead of fresh, page-faulting memory
# (experiments/bench_efs.py measured 64, 256 and 1024 KiB).
DEFAULT_BLOCK_SIZE = 64 * 1024
MIN_BLOCK_SIZE = 4 * 1024
MAX_BLOCK_SIZE = 16 * 1024 * 1024
TAG_SIZE = 16
SALT_SIZE = 32
FILE_ID_SIZE = 16
KEY_ID_SIZE = 16
NONCE_SIZE = 12
FORMAT_VERSION = 1
FILE_MAGIC = b"DEFSF"
INDEX_MAGIC = b"DEFSI"
# magic, format, reserved, block size, file id, version, size, salt, Merkle root
_FILE_HEADER = struct.Struct(">5sBHI16sQQ32s32s")
HEADER_SIZE = _FILE_HEADER.size + 32
# magic, format, policy, key id, version, nonce
_INDEX_HEADER = struct.Struct(">5sBB16sQ12s")
INDEX_NAME = "index"
INDEX_NEXT_NAME = "index.next"
LOCK_NAME = "lock"
_HOST_NAME = re.compile(r"[0-9a-f]{40}")
_STAGED_NAME = re.compile(r"([0-9]+)-[0-9a-f]{16}\.staged")
_MAX_PATH = 4096
_MAX_COMPONENT = 255
# Encrypt and write this much at a time: big writes, one reusable buffer.
_BATCH_BYTES = 4 * 1024 * 1024
# Block decryptions tried when naming where a bad block came from (failure path only).
_DIAGNOSE_BUDGET = 4096
_INFO_MOUNT = b"detente/v1 efs mount "
_INFO_FILE = b"detente/v1 efs file "


class EfsFileNotFoundError(DetenteError, FileNotFoundError):
    """The path does not exist in the encrypted mount."""


class EfsIsADirectoryError(DetenteError, IsADirectoryError):
    """A file operation named a directory of the encrypted mount."""


class EfsNotADirectoryError(DetenteError, NotADirectoryError):
    """A directory operation (or a path below it) named a file of the encrypted mount."""


def _hkdf(ikm: bytes, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _nonce(index: int) -> bytes:
    return index.to_bytes(8, "big") + b"\0\0\0\0"


def merkle_root(tags: bytes | bytearray | memoryview, count: int) -> bytes:
    """RFC 6962 §2.1 Merkle Tree Hash over ``count`` 16-byte leaves (the block tags).

    Leaves hash as SHA-256(0x00 ‖ tag), nodes as SHA-256(0x01 ‖ left ‖ right).
    Pairing left to right and carrying an odd last node up unchanged gives
    exactly the RFC's split at the largest power of two below n.
    """
    view = memoryview(tags)
    if len(view) != count * TAG_SIZE:
        raise FormatError(f"{len(view)} bytes are not {count} tags")
    if count == 0:
        return hashlib.sha256(b"").digest()
    level = [
        hashlib.sha256(b"\x00" + view[i * TAG_SIZE : (i + 1) * TAG_SIZE]).digest()
        for i in range(count)
    ]
    while len(level) > 1:
        paired = [
            hashlib.sha256(b"\x01" + level[k] + level[k + 1]).digest()
            for k in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _block_count(size: int, block_size: int) -> int:
    return -(-size // block_size)


def blob_size(size: int, block_size: int) -> int:
    """Bytes on the host for a file of ``size`` plaintext bytes."""
    return HEADER_SIZE + size + _block_count(size, block_size) * TAG_SIZE


class MountKey:
    """The keys of one mount. Holds secrets: never printed or pickled."""

    def __init__(self, key: bytes, policy: str, mount_path: str) -> None:
        if len(key) != 32:
            raise FormatError(f"a mount key is 32 bytes, got {len(key)}")
        if policy not in POLICIES:
            raise FormatError(f"unknown key policy {policy!r}; use 'mrenclave' or 'mrsigner'")
        self.policy = policy
        self.mount_path = mount_path
        self._key = key
        self._names = _hkdf(key, b"names")
        self._index = AESGCM(_hkdf(key, b"index"))
        self.key_id = _hkdf(key, b"key id", KEY_ID_SIZE)
        # The counter's name is derived too: the platform directory does not
        # learn the mount path, and another key never touches this counter.
        self.counter_name = "efs-" + _hkdf(key, b"counter name", 16).hex()

    @classmethod
    def derive(
        cls, secret: bytes, mrenclave: bytes, mrsigner: bytes, policy: str, mount_path: str
    ) -> MountKey:
        """The key of ``mount_path`` for this enclave (``mrenclave``) or signer (``mrsigner``)."""
        if policy not in POLICIES:
            raise FormatError(f"unknown key policy {policy!r}; use 'mrenclave' or 'mrsigner'")
        identity = mrenclave if policy == "mrenclave" else mrsigner
        if len(identity) != 32:
            raise FormatError(f"an enclave identity is a 32-byte measurement, got {len(identity)}")
        info = _INFO_MOUNT + policy.encode() + b" " + identity + b" " + mount_path.encode()
        return cls(_hkdf(secret, info), policy, mount_path)

    def __repr__(self) -> str:
        return f"<MountKey {self.mount_path} policy={self.policy} (secret, not shown)>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("MountKey holds a secret key and cannot be pickled")

    def file_id(self, path: str) -> bytes:
        return hmac.digest(self._names, b"file id\0" + path.encode(), "sha256")[:FILE_ID_SIZE]

    def host_name(self, path: str, salt: bytes) -> str:
        digest = hmac.digest(self._names, b"host name\0" + path.encode() + b"\0" + salt, "sha256")
        return digest[:20].hex()

    def file_keys(self, file_id: bytes, salt: bytes) -> tuple[AESGCM, bytes]:
        okm = _hkdf(self._key, _INFO_FILE + file_id, 64, salt=salt)
        return AESGCM(okm[:32]), okm[32:]

    def seal_index(self, header: bytes, nonce: bytes, plaintext: bytes) -> bytes:
        return self._index.encrypt(nonce, plaintext, header)

    def open_index(self, header: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
        return self._index.decrypt(nonce, ciphertext, header)


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
        return _block_count(self.size, self.block_size)

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
            not _HOST_NAME.fullmatch(entry.host)
            or len(entry.file_id) != FILE_ID_SIZE
            or len(entry.salt) != SALT_SIZE
            or len(entry.root) != 32
            or entry.size < 0
            or not MIN_BLOCK_SIZE <= entry.block_size <= MAX_BLOCK_SIZE
        ):
            raise FormatError("an index entry is malformed")
        return entry


@dataclass(frozen=True)
class FileInfo:
    """What ``stat`` reports: the in-enclave path, the plaintext size and the version."""

    path: str
    size: int
    version: int


@dataclass(frozen=True)
class _Index:
    version: int
    files: dict[str, FileEntry]


@dataclass(frozen=True)
class _Header:
    block_size: int
    file_id: bytes
    version: int
    size: int
    salt: bytes
    root: bytes
    mac: bytes
    signed: bytes


def _parse_header(data: bytes) -> _Header | None:
    if len(data) < HEADER_SIZE:
        return None
    magic, fmt, _reserved, bs, file_id, version, size, salt, root = _FILE_HEADER.unpack_from(data)
    if magic != FILE_MAGIC or fmt != FORMAT_VERSION:
        return None
    signed = data[: _FILE_HEADER.size]
    return _Header(bs, file_id, version, size, salt, root, data[_FILE_HEADER.size :], signed)


def _aad(file_id: bytes, index: int) -> bytes:
    """Associated data of block ``index``: the file id and the position."""
    return file_id + index.to_bytes(8, "big")


def _read_block(
    fd: int, entry: FileEntry, index: int, scratch: memoryview, name: str
) -> memoryview:
    """Block ``index`` (ciphertext ‖ tag) of ``entry``'s blob, read into ``scratch``."""
    start = index * entry.block_size
    length = min(entry.block_size, entry.size - start) + TAG_SIZE
    view = scratch[:length]
    if _read_exact(fd, view, HEADER_SIZE + start + index * TAG_SIZE) != length:
        raise IntegrityError(f"{name} was truncated while it was being read")
    return view


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _read_exact(fd: int, buffer: memoryview, offset: int) -> int:
    """Fill ``buffer`` from ``offset``; return the bytes read (fewer only at end of file)."""
    done = 0
    while done < len(buffer):
        got = os.preadv(fd, [buffer[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


def _replace(source: Path, target: Path) -> None:
    """Rename ``source`` over ``target`` durably. One place, so tests can cut power here."""
    os.replace(source, target)
    fsync_directory(target.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        self._counter = counter
        self._thread_lock = threading.RLock()
        self._index: _Index | None = None
        # An index whose counter increment succeeded but whose write failed in
        # this process: written again before anything else happens.
        self._unwritten: tuple[_Index, bytes] | None = None
        self.host_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._locked():
            self._refresh()
            self._collect_garbage()

    def __repr__(self) -> str:
        return f"<EncryptedFS {self.mount_path} on {self.host_dir} policy={self._key.policy}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("EncryptedFS holds mount keys and cannot be pickled")

    # --- public API ---------------------------------------------------------

    @property
    def version(self) -> int:
        """The index version (= the platform counter) as of the last operation."""
        with self._locked():
            return self._refresh().version

    def write_bytes(
        self, path: str | os.PathLike[str], data: bytes | bytearray | memoryview
    ) -> int:
        """Replace ``path`` with ``data`` atomically; return the number of bytes written."""
        rel = self._file_path(path)
        writer = EncryptedFileWriter(self, rel)
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
            self._check_blob(rel, entry, fd)
            aes, _ = self._key.file_keys(entry.file_id, entry.salt)
            scratch = memoryview(bytearray(entry.block_size + TAG_SIZE))
            name = self._name(rel)

            def block(i: int) -> memoryview:
                return _read_block(fd, entry, i, scratch, name)

            # One block at a time through one small buffer: the ciphertext is
            # still in the CPU cache when it is decrypted, and the only large
            # allocation is the result, as for a plain read.
            parts: list[bytes] = []
            tags = bytearray()
            for i in range(entry.blocks):
                data = block(i)
                try:
                    parts.append(aes.decrypt(_nonce(i), data, _aad(entry.file_id, i)))
                except InvalidTag:
                    self._raise_bad_block(rel, entry, block, "failed authentication")
                tags += data[-TAG_SIZE:]
            if merkle_root(tags, entry.blocks) != entry.root:
                self._raise_bad_block(rel, entry, block, "do not match the Merkle root")
            return b"".join(parts)
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
                self._check_blob(rel, entry, fd)
            except BaseException:
                os.close(fd)
                raise
            return EncryptedFileReader(self, rel, entry, fd)
        if mode == "wb":
            with self._locked():
                self._check_can_write(self._refresh(), rel)
            return EncryptedFileWriter(self, rel)
        raise FormatError(f"EFS open mode {mode!r} is not supported; use 'rb' or 'wb'")

    def exists(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is a file or a directory (a prefix of some file) of the mount."""
        rel = self._relative(path)
        with self._locked():
            files = self._refresh().files
        if rel == "" or rel in files:
            return True
        prefix = rel + "/"
        return any(name.startswith(prefix) for name in files)

    def is_file(self, path: str | os.PathLike[str]) -> bool:
        rel = self._relative(path)
        with self._locked():
            return rel in self._refresh().files

    def listdir(self, path: str | os.PathLike[str] = "") -> list[str]:
        """Sorted names directly under directory ``path`` (the mount root by default)."""
        rel = self._relative(path)
        with self._locked():
            files = self._refresh().files
        if rel in files:
            raise EfsNotADirectoryError(f"{self._name(rel)} is a file, not a directory")
        prefix = rel + "/" if rel else ""
        names = {name[len(prefix) :].split("/", 1)[0] for name in files if name.startswith(prefix)}
        if rel and not names:
            raise EfsFileNotFoundError(f"no directory {self._name(rel)} in the encrypted mount")
        return sorted(names)

    def files(self) -> list[str]:
        """Every file of the mount, as sorted paths relative to it."""
        with self._locked():
            return sorted(self._refresh().files)

    def stat(self, path: str | os.PathLike[str]) -> FileInfo:
        rel = self._file_path(path)
        with self._locked():
            entry = self._entry(self._refresh(), rel)
        return FileInfo(self._name(rel), entry.size, entry.version)

    def remove(self, path: str | os.PathLike[str]) -> None:
        """Delete file ``path`` (committed like a write: atomic, counted, rollback-checked)."""
        rel = self._file_path(path)
        with self._locked():
            index = self._refresh()
            entry = self._entry(index, rel)
            files = dict(index.files)
            del files[rel]
            self._commit(_Index(index.version + 1, files))
            self._unlink(entry.host)

    # --- paths ----------------------------------------------------------------

    def _name(self, rel: str) -> str:
        """The in-enclave name of ``rel``, as errors show it."""
        return f"{self.mount_path.rstrip('/')}/{rel}"

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

    def _entry(self, index: _Index, rel: str) -> FileEntry:
        entry = index.files.get(rel)
        if entry is not None:
            return entry
        if any(name.startswith(rel + "/") for name in index.files):
            raise EfsIsADirectoryError(f"{self._name(rel)} is a directory")
        raise EfsFileNotFoundError(f"no file {self._name(rel)} in the encrypted mount")

    def _check_can_write(self, index: _Index, rel: str) -> None:
        parts = rel.split("/")
        for k in range(1, len(parts)):
            parent = "/".join(parts[:k])
            if parent in index.files:
                raise EfsNotADirectoryError(
                    f"cannot write {self._name(rel)}: {self._name(parent)} is a file"
                )
        if any(name.startswith(rel + "/") for name in index.files):
            raise EfsIsADirectoryError(f"cannot write {self._name(rel)}: it is a directory")

    # --- locking, index, counter ----------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # flock excludes other processes (and other EncryptedFS objects: each
        # open() is its own open file description); the RLock excludes threads.
        with self._thread_lock:
            fd = os.open(self.host_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _refresh(self) -> _Index:
        """The current index, reloaded and rollback-checked if the counter moved. Needs the lock."""
        value = self._counter.read()
        if self._unwritten is not None and value == self._unwritten[0].version:
            index, blob = self._unwritten
            self._write_index(blob)
            self._index, self._unwritten = index, None
        if self._index is not None and value == self._index.version:
            return self._index
        self._index = self._load(value)
        self._unwritten = None
        return self._index

    def _load(self, value: int | None) -> _Index:
        where = f"encrypted mount {self.mount_path} ({self.host_dir})"
        try:
            blob = (self.host_dir / INDEX_NAME).read_bytes()
        except FileNotFoundError:
            blob = None
        if blob is None:
            if value is None:
                self._counter.create()
                return _Index(0, {})
            if value == 0:
                return _Index(0, {})
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

    def _roll_forward(self, value: int) -> _Index | None:
        """Finish a commit that incremented the counter but died before renaming its index."""
        try:
            blob = (self.host_dir / INDEX_NEXT_NAME).read_bytes()
            index = self._open_index(blob, INDEX_NEXT_NAME)
        except (FileNotFoundError, IntegrityError):
            return None
        if index.version != value:
            return None
        _replace(self.host_dir / INDEX_NEXT_NAME, self.host_dir / INDEX_NAME)
        log.warning("%s: finished an interrupted commit (version %d)", self.mount_path, value)
        return index

    def _index_header(self, version: int, nonce: bytes) -> bytes:
        policy = POLICIES[self._key.policy]
        return _INDEX_HEADER.pack(
            INDEX_MAGIC, FORMAT_VERSION, policy, self._key.key_id, version, nonce
        )

    def _seal_index(self, index: _Index) -> bytes:
        document = {
            "format": FORMAT_VERSION,
            "mount": self.mount_path,
            "version": index.version,
            "files": {path: entry.to_json() for path, entry in index.files.items()},
        }
        plaintext = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        header = self._index_header(index.version, secrets.token_bytes(NONCE_SIZE))
        return header + self._key.seal_index(header, header[-NONCE_SIZE:], plaintext)

    def _open_index(self, blob: bytes, name: str) -> _Index:
        where = f"encrypted mount {self.mount_path}: {self.host_dir / name}"
        size = _INDEX_HEADER.size
        if len(blob) < size + TAG_SIZE or not blob.startswith(INDEX_MAGIC):
            raise IntegrityError(f"{where} is not an EFS index: it was altered or replaced")
        _, fmt, policy, key_id, version, nonce = _INDEX_HEADER.unpack_from(blob)
        if fmt != FORMAT_VERSION:
            raise IntegrityError(f"{where} has format {fmt}, not {FORMAT_VERSION}")
        if policy != POLICIES[self._key.policy]:
            other = {v: k for k, v in POLICIES.items()}.get(policy, f"unknown ({policy})")
            raise IntegrityError(
                f"{where} was written under the {other!r} key policy, this mount uses "
                f"{self._key.policy!r}: mount it with key_policy = {other!r}"
            )
        if not hmac.compare_digest(key_id, self._key.key_id):
            raise IntegrityError(
                f"{where} was written under another key: by another enclave "
                f"({self._key.policy} policy: "
                + (
                    "only the exact image that wrote a mount can open it; use "
                    "key_policy = 'mrsigner' for data that must survive upgrades"
                    if self._key.policy == "mrenclave"
                    else "only images of the same signer can open it"
                )
                + "), for another mount path, or on another platform"
            )
        try:
            plaintext = self._key.open_index(blob[:size], nonce, blob[size:])
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
        return _Index(version, files)

    def _commit(self, index: _Index) -> None:
        """Make ``index`` the mount's state: counter first, then the index file. Needs the lock."""
        blob = self._seal_index(index)
        reserved = self._counter.increment()
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
            _write_all(fd, memoryview(blob))
            os.fsync(fd)
        finally:
            os.close(fd)
        _replace(staged, self.host_dir / INDEX_NAME)

    def _unlink(self, host: str) -> None:
        try:
            os.unlink(self.host_dir / host)
        except FileNotFoundError:
            pass

    def _collect_garbage(self) -> None:
        """Delete blobs no index refers to and staged files of dead writers. Needs the lock."""
        assert self._index is not None
        referenced = {entry.host for entry in self._index.files.values()}
        for child in self.host_dir.iterdir():
            name = child.name
            staged = _STAGED_NAME.fullmatch(name)
            stale = (
                (_HOST_NAME.fullmatch(name) is not None and name not in referenced)
                or (staged is not None and not _pid_alive(int(staged.group(1))))
                or name == INDEX_NEXT_NAME
            )
            if stale:
                log.info("%s: removing unreferenced host file %s", self.mount_path, name)
                child.unlink(missing_ok=True)

    # --- reading --------------------------------------------------------------

    def _open_blob(self, rel: str) -> tuple[FileEntry, int]:
        with self._locked():
            entry = self._entry(self._refresh(), rel)
            try:
                fd = os.open(self.host_dir / entry.host, os.O_RDONLY)
            except FileNotFoundError:
                raise IntegrityError(
                    f"{self._name(rel)}: its encrypted file is missing from {self.host_dir}; "
                    "the host deleted or renamed it"
                ) from None
        return entry, fd

    def _check_blob(self, rel: str, entry: FileEntry, fd: int) -> None:
        """Check the header against the index and the blob's length. Raise IntegrityError."""
        name = self._name(rel)
        raw = os.pread(fd, HEADER_SIZE, 0)
        header = _parse_header(raw)
        if header is None:
            if len(raw) < HEADER_SIZE:
                raise IntegrityError(
                    f"{name} was truncated: its encrypted file is {len(raw)} bytes, shorter "
                    "than a header"
                )
            raise IntegrityError(f"{name}: its encrypted file's header was altered")
        if header.file_id != entry.file_id:
            with self._locked():
                files = self._refresh().files
            others = [p for p, e in files.items() if e.file_id == header.file_id]
            source = f"the content of {self._name(others[0])}" if others else "another file"
            raise IntegrityError(
                f"{name} holds {source}: the host swapped or replaced encrypted files"
            )
        if header.version < entry.version:
            raise IntegrityError(
                f"{name} was rolled back: the host put back version {header.version}, the "
                f"index says version {entry.version}"
            )
        if (header.version, header.size, header.block_size, header.salt, header.root) != (
            entry.version,
            entry.size,
            entry.block_size,
            entry.salt,
            entry.root,
        ):
            raise IntegrityError(
                f"{name}: its encrypted file's header (version {header.version}, "
                f"{header.size} bytes) does not match the index (version {entry.version}, "
                f"{entry.size} bytes): it was altered or replaced"
            )
        _, mac_key = self._key.file_keys(entry.file_id, entry.salt)
        if not hmac.compare_digest(hmac.digest(mac_key, header.signed, "sha256"), header.mac):
            raise IntegrityError(f"{name}: its encrypted file's header was altered")
        expected = blob_size(entry.size, entry.block_size)
        actual = os.fstat(fd).st_size
        if actual < expected:
            raise IntegrityError(
                f"{name} was truncated: {expected - actual} of its {expected} encrypted bytes "
                "are missing"
            )
        if actual > expected:
            raise IntegrityError(
                f"{name} was extended: {actual - expected} bytes were appended to its "
                f"{expected} encrypted bytes"
            )

    def _raise_bad_block(
        self, rel: str, entry: FileEntry, block: Callable[[int], memoryview], problem: str
    ) -> NoReturn:
        """Find the first block that fails, say where it came from if we can, and raise.

        ``block(i)`` returns block i's ciphertext and tag. Only runs on the
        failure path, so it may try a bounded number of other positions and
        files to name the swap.
        """
        name = self._name(rel)
        aes, _ = self._key.file_keys(entry.file_id, entry.salt)
        bad = None
        for i in range(entry.blocks):
            try:
                aes.decrypt(_nonce(i), block(i), _aad(entry.file_id, i))
            except InvalidTag:
                bad = i
                break
        if bad is None:
            raise IntegrityError(
                f"{name}: its block tags {problem} in the index, yet every block authenticates"
            )
        data = bytes(block(bad))
        budget = _DIAGNOSE_BUDGET
        with self._locked():
            others = sorted(self._refresh().files.items())
        candidates = [(rel, entry)] + [(p, e) for p, e in others if p != rel]
        for other_rel, other in candidates:
            other_aes, _ = self._key.file_keys(other.file_id, other.salt)
            for j in range(other.blocks):
                if (other_rel, j) == (rel, bad):
                    continue
                length = min(other.block_size, other.size - j * other.block_size) + TAG_SIZE
                if length != len(data):
                    continue
                budget -= 1
                if budget < 0:
                    break
                try:
                    other_aes.decrypt(_nonce(j), data, _aad(other.file_id, j))
                except InvalidTag:
                    continue
                where = "of the same file" if other_rel == rel else f"of {self._name(other_rel)}"
                raise IntegrityError(
                    f"{name}: block {bad} of {entry.blocks} holds block {j} {where}: the host "
                    + (
                        "reordered its blocks"
                        if other_rel == rel
                        else "copied blocks between files"
                    )
                )
        raise IntegrityError(
            f"{name}: block {bad} of {entry.blocks} failed authentication: the host altered "
            "its bytes (or put in a block of an older version or of another mount)"
        )

    # --- writing --------------------------------------------------------------

    def _commit_file(self, rel: str, staged: _StagedFile) -> None:
        with self._locked():
            index = self._refresh()
            self._check_can_write(index, rel)
            version = index.version + 1
            host = self._key.host_name(rel, staged.salt)
            entry = staged.finish(version, host)
            target = self.host_dir / host
            _replace(staged.path, target)
            old = index.files.get(rel)
            files = dict(index.files)
            files[rel] = entry
            try:
                self._commit(_Index(version, files))
            except BaseException:
                if self._unwritten is None:
                    # The counter did not move: the old index stands; drop the new blob.
                    target.unlink(missing_ok=True)
                raise
            if old is not None:
                self._unlink(old.host)


class _StagedFile:
    """A new version being written: encrypted block by block into a staged host file."""

    def __init__(self, fs: EncryptedFS, rel: str) -> None:
        self.block_size = fs.block_size
        self.salt = secrets.token_bytes(SALT_SIZE)
        self.file_id = fs._key.file_id(rel)
        self._aes, self._mac_key = fs._key.file_keys(self.file_id, self.salt)
        self.path = fs.host_dir / f"{os.getpid()}-{secrets.token_hex(8)}.staged"
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
        blocks = min(self._batch, _block_count(len(view), bs))
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
                    _nonce(i),
                    chunk[start : start + length],
                    _aad(self.file_id, i),
                    out[used : used + length + TAG_SIZE],
                )
                used += length + TAG_SIZE
                self._tags += out[used - TAG_SIZE : used]
                self._blocks += 1
            _write_all(self._fd, out[:used])
            done += len(chunk)
            self.size += len(chunk)

    def finish(self, version: int, host: str) -> FileEntry:
        """Encrypt the last short block, write the header for ``version``, fsync, close."""
        if self._pending:
            self._encrypt(memoryview(self._pending))
            self._pending = bytearray()
        root = merkle_root(self._tags, self._blocks)
        signed = _FILE_HEADER.pack(
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

    def __init__(self, fs: EncryptedFS, rel: str) -> None:
        self._fs = fs
        self._rel = rel
        self.name = fs._name(rel)
        self._size = 0
        self._staged: _StagedFile | None = _StagedFile(fs, rel)

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
            self._fs._commit_file(self._rel, staged)
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


class EncryptedFileReader(io.RawIOBase):
    """A file of the mount opened with "rb": seekable, decrypted block by block.

    The block tags are checked against the Merkle root when the file is
    opened, so a truncated, extended or reordered file is refused before any
    byte is returned; each block is authenticated when it is read.
    """

    def __init__(self, fs: EncryptedFS, rel: str, entry: FileEntry, fd: int) -> None:
        super().__init__()
        self._fs = fs
        self._rel = rel
        self.name = fs._name(rel)
        self._entry = entry
        self._fd = fd
        self._pos = 0
        self._aes, _ = fs._key.file_keys(entry.file_id, entry.salt)
        self._stride = entry.block_size + TAG_SIZE
        self._cipher = bytearray(self._stride)
        self._plain = bytearray(entry.block_size)
        self._cached = -1
        # The reader owns ``fd`` from here: on any failure it closes it itself.
        try:
            tags = bytearray(entry.blocks * TAG_SIZE)
            for i in range(entry.blocks):
                end = HEADER_SIZE + i * self._stride + self._length(i) + TAG_SIZE
                tags[i * TAG_SIZE : (i + 1) * TAG_SIZE] = os.pread(fd, TAG_SIZE, end - TAG_SIZE)
            if merkle_root(tags, entry.blocks) != entry.root:
                fs._raise_bad_block(rel, entry, self._read_block, "do not match the Merkle root")
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<EncryptedFileReader {self.name}{' closed' if self.closed else ''}>"

    def _length(self, i: int) -> int:
        return min(self._entry.block_size, self._entry.size - i * self._entry.block_size)

    def _read_block(self, i: int) -> memoryview:
        return _read_block(self._fd, self._entry, i, memoryview(self._cipher), self.name)

    def _decrypt(self, i: int, target: memoryview) -> None:
        try:
            self._aes.decrypt_into(
                _nonce(i), self._read_block(i), _aad(self._entry.file_id, i), target
            )
        except InvalidTag:
            self._fs._raise_bad_block(
                self._rel, self._entry, self._read_block, "failed authentication"
            )

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._entry.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset} in {self.name}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        self._check_open()
        out = memoryview(buffer).cast("B")
        size, bs = self._entry.size, self._entry.block_size
        filled = 0
        while filled < len(out) and self._pos < size:
            i, offset = divmod(self._pos, bs)
            length = self._length(i)
            room = len(out) - filled
            if offset == 0 and room >= length and i != self._cached:
                # A whole block fits: decrypt straight into the caller's buffer.
                self._decrypt(i, out[filled : filled + length])
                take = length
            else:
                if i != self._cached:
                    self._decrypt(i, memoryview(self._plain)[:length])
                    self._cached = i
                take = min(length - offset, room)
                out[filled : filled + take] = memoryview(self._plain)[offset : offset + take]
            filled += take
            self._pos += take
        return filled

    def readall(self) -> bytes:
        remaining = max(0, self._entry.size - self._pos)
        buffer = bytearray(remaining)
        got = self.readinto(buffer)
        return bytes(memoryview(buffer)[:got])

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed file {self.name}")
