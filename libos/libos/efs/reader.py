"""Reading an encrypted file: header and length checks, block decryption, naming what the host did.

Every check raises IntegrityError whose message starts with the in-enclave
name and says what the host changed: a swapped, rolled back, truncated or
extended file, an altered header, a block altered, reordered or copied from
another file.
"""

from __future__ import annotations

import hmac
import io
import os
from collections.abc import Callable
from typing import Any, NoReturn

from cryptography.exceptions import InvalidTag

from libos.efs.format import (
    HEADER_SIZE,
    TAG_SIZE,
    aad,
    blob_size,
    merkle_root,
    nonce,
    parse_header,
    read_exact,
)
from libos.efs.index import FileEntry, MountIndex
from protocols.errors import IntegrityError

# Block decryptions tried when naming where a bad block came from (failure path only).
_DIAGNOSE_BUDGET = 4096


def _read_block(
    fd: int, entry: FileEntry, index: int, scratch: memoryview, name: str
) -> memoryview:
    """Block ``index`` (ciphertext ‖ tag) of ``entry``'s blob, read into ``scratch``."""
    start = index * entry.block_size
    length = min(entry.block_size, entry.size - start) + TAG_SIZE
    view = scratch[:length]
    if read_exact(fd, view, HEADER_SIZE + start + index * TAG_SIZE) != length:
        raise IntegrityError(f"{name} was truncated while it was being read")
    return view


def check_blob(mount: MountIndex, rel: str, entry: FileEntry, fd: int) -> None:
    """Check the header against the index and the blob's length. Raise IntegrityError."""
    name = mount.name(rel)
    raw = os.pread(fd, HEADER_SIZE, 0)
    header = parse_header(raw)
    if header is None:
        if len(raw) < HEADER_SIZE:
            raise IntegrityError(
                f"{name} was truncated: its encrypted file is {len(raw)} bytes, shorter "
                "than a header"
            )
        raise IntegrityError(f"{name}: its encrypted file's header was altered")
    if header.file_id != entry.file_id:
        with mount.locked():
            files = mount.current().files
        others = [p for p, e in files.items() if e.file_id == header.file_id]
        source = f"the content of {mount.name(others[0])}" if others else "another file"
        raise IntegrityError(f"{name} holds {source}: the host swapped or replaced encrypted files")
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
    _, mac_key = mount.key.file_keys(entry.file_id, entry.salt)
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


def raise_bad_block(
    mount: MountIndex,
    rel: str,
    entry: FileEntry,
    block: Callable[[int], memoryview],
    problem: str,
) -> NoReturn:
    """Find the first block that fails, say where it came from if we can, and raise.

    ``block(i)`` returns block i's ciphertext and tag. Only runs on the
    failure path, so it may try a bounded number of other positions and
    files to name the swap.
    """
    name = mount.name(rel)
    aes, _ = mount.key.file_keys(entry.file_id, entry.salt)
    bad = None
    for i in range(entry.blocks):
        try:
            aes.decrypt(nonce(i), block(i), aad(entry.file_id, i))
        except InvalidTag:
            bad = i
            break
    if bad is None:
        raise IntegrityError(
            f"{name}: its block tags {problem} in the index, yet every block authenticates"
        )
    data = bytes(block(bad))
    budget = _DIAGNOSE_BUDGET
    with mount.locked():
        others = sorted(mount.current().files.items())
    candidates = [(rel, entry)] + [(p, e) for p, e in others if p != rel]
    for other_rel, other in candidates:
        other_aes, _ = mount.key.file_keys(other.file_id, other.salt)
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
                other_aes.decrypt(nonce(j), data, aad(other.file_id, j))
            except InvalidTag:
                continue
            where = "of the same file" if other_rel == rel else f"of {mount.name(other_rel)}"
            raise IntegrityError(
                f"{name}: block {bad} of {entry.blocks} holds block {j} {where}: the host "
                + ("reordered its blocks" if other_rel == rel else "copied blocks between files")
            )
    raise IntegrityError(
        f"{name}: block {bad} of {entry.blocks} failed authentication: the host altered "
        "its bytes (or put in a block of an older version or of another mount)"
    )


def read_all(mount: MountIndex, rel: str, entry: FileEntry, fd: int) -> bytes:
    """The whole plaintext of ``entry``'s blob open at ``fd`` (already checked by check_blob)."""
    aes, _ = mount.key.file_keys(entry.file_id, entry.salt)
    scratch = memoryview(bytearray(entry.block_size + TAG_SIZE))
    name = mount.name(rel)

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
            parts.append(aes.decrypt(nonce(i), data, aad(entry.file_id, i)))
        except InvalidTag:
            raise_bad_block(mount, rel, entry, block, "failed authentication")
        tags += data[-TAG_SIZE:]
    if merkle_root(tags, entry.blocks) != entry.root:
        raise_bad_block(mount, rel, entry, block, "do not match the Merkle root")
    return b"".join(parts)


class EncryptedFileReader(io.RawIOBase):
    """A file of the mount opened with "rb": seekable, decrypted block by block.

    The block tags are checked against the Merkle root when the file is
    opened, so a truncated, extended or reordered file is refused before any
    byte is returned; each block is authenticated when it is read.
    """

    def __init__(self, mount: MountIndex, rel: str, entry: FileEntry, fd: int) -> None:
        super().__init__()
        self._mount = mount
        self._rel = rel
        self.name = mount.name(rel)
        self._entry = entry
        self._fd = fd
        self._pos = 0
        self._aes, _ = mount.key.file_keys(entry.file_id, entry.salt)
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
                raise_bad_block(mount, rel, entry, self._read_block, "do not match the Merkle root")
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
                nonce(i), self._read_block(i), aad(self._entry.file_id, i), target
            )
        except InvalidTag:
            raise_bad_block(
                self._mount, self._rel, self._entry, self._read_block, "failed authentication"
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
