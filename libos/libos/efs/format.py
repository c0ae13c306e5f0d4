"""The on-disk format of an encrypted file: block layout, header, Merkle tree, raw host I/O.

Blob layout of one file (one host file per version, integers big-endian)::

    magic "DEFSF" 5 | format 1 (1) | reserved 0 (2) | block size (4) | file id (16)
    | version (8) | size (8) | salt (32) | Merkle root (32) | HMAC-SHA256 of all before (32)
    then, for each block i of ceil(size / block size): AES-256-GCM(block i) ‖ tag i (16)

Block i uses nonce = i (8 bytes) ‖ 0 (4 bytes), unique because each version
has its own key, and associated data = file id ‖ i, so a block moved within a
file or between files fails its tag. The Merkle root is the RFC 6962 §2.1
Merkle Tree Hash over the block tags, so it commits to every block, their
order and their number; it is in the MAC'd header and in the index.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from protocols.durable import fsync_dir
from protocols.errors import FormatError

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
NONCE_SIZE = 12
FORMAT_VERSION = 1
FILE_MAGIC = b"DEFSF"
# magic, format, reserved, block size, file id, version, size, salt, Merkle root
FILE_HEADER = struct.Struct(">5sBHI16sQQ32s32s")
HEADER_SIZE = FILE_HEADER.size + 32
# Host file names: a committed version (20 bytes of HMAC, hex: libos.efs.keys),
# and a version being written ("<writer pid>-<random>.staged": libos.efs.writer).
HOST_NAME = re.compile(r"[0-9a-f]{40}")
STAGED_NAME = re.compile(r"([0-9]+)-[0-9a-f]{16}\.staged")


def nonce(index: int) -> bytes:
    """The AES-GCM nonce of block ``index``: the index (8 bytes) ‖ 0 (4 bytes)."""
    return index.to_bytes(8, "big") + b"\0\0\0\0"


def aad(file_id: bytes, index: int) -> bytes:
    """Associated data of block ``index``: the file id and the position."""
    return file_id + index.to_bytes(8, "big")


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


def block_count(size: int, block_size: int) -> int:
    """Blocks of a file of ``size`` plaintext bytes (the last one may be short)."""
    return -(-size // block_size)


def blob_size(size: int, block_size: int) -> int:
    """Bytes on the host for a file of ``size`` plaintext bytes."""
    return HEADER_SIZE + size + block_count(size, block_size) * TAG_SIZE


@dataclass(frozen=True)
class Header:
    """A parsed file header; ``signed`` is the part its HMAC ``mac`` covers."""

    block_size: int
    file_id: bytes
    version: int
    size: int
    salt: bytes
    root: bytes
    mac: bytes
    signed: bytes


def parse_header(data: bytes) -> Header | None:
    """The header at the start of ``data``; None if it is short or not an EFS file header."""
    if len(data) < HEADER_SIZE:
        return None
    magic, fmt, _reserved, bs, file_id, version, size, salt, root = FILE_HEADER.unpack_from(data)
    if magic != FILE_MAGIC or fmt != FORMAT_VERSION:
        return None
    signed = data[: FILE_HEADER.size]
    return Header(bs, file_id, version, size, salt, root, data[FILE_HEADER.size :], signed)


def write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def read_exact(fd: int, buffer: memoryview, offset: int) -> int:
    """Fill ``buffer`` from ``offset``; return the bytes read (fewer only at end of file)."""
    done = 0
    while done < len(buffer):
        got = os.preadv(fd, [buffer[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


def replace_durably(source: Path, target: Path) -> None:
    """Rename ``source`` over ``target`` durably. One function, so tests can cut power here."""
    os.replace(source, target)
    fsync_dir(target.parent)
