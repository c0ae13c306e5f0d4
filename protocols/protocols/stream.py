"""Streaming AEAD for bulk data: the STREAM construction over AES-256-GCM.

Hoang, Reyhanitabar, Rogaway, Vizár, "Online Authenticated-Encryption and its
Nonce-Reuse Misuse-Resistance" (CRYPTO 2015), §7: each chunk is sealed with
nonce = prefix ‖ counter ‖ last-flag, so dropping, reordering, truncating,
extending or splicing chunks makes a chunk fail to open. The stream header and
the caller's associated data (a data set or job id) are authenticated with
every chunk. The blob layout, header and opening rules: protocols/SPEC.md §5.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocols.errors import FormatError, IntegrityError
from protocols.layout import Field, Layout

MAGIC = b"DTNTSTRM"
VERSION = 1
# The one chunk size of Detente: a sealed STREAM chunk, and a piece of a data set or
# an output in a gRPC message or a pipe frame (protocols/SPEC.md §5).
CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 1 << 26
TAG_SIZE = 16
KEY_SIZE = 32

HEADER = Layout(
    "stream header",
    [
        Field("magic", 8),
        Field("version", 2, "uint"),
        Field("flags", 2, "uint"),
        Field("chunk_size", 4, "uint"),
        Field("nonce_prefix", 7),
        Field("reserved", 1),
    ],
)


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    if counter >= 1 << 32:
        raise IntegrityError("stream has too many chunks")
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"stream key must be {KEY_SIZE} bytes, got {len(key)}")


def parse_header(header: bytes) -> int:
    """Validate a stream header; return its chunk size."""
    values = HEADER.unpack(header)
    if values["magic"] != MAGIC:
        raise FormatError("not a Detente encrypted stream (bad magic)")
    if values["version"] != VERSION:
        raise FormatError(f"unsupported stream version {values['version']}")
    if values["flags"] != 0 or values["reserved"] != b"\x00":
        raise FormatError("stream header has reserved bits set")
    size = int(values["chunk_size"])
    if not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
        raise FormatError(f"stream chunk size {size} is out of range")
    return size


class StreamSealer:
    """Seal one stream under ``key``; bytes may be fed in any pieces."""

    def __init__(self, key: bytes, associated_data: bytes, chunk_size: int = CHUNK_SIZE) -> None:
        self._start(key, associated_data, chunk_size, os.urandom(7))

    def _start(
        self, key: bytes, associated_data: bytes, chunk_size: int, nonce_prefix: bytes
    ) -> None:
        _check_key(key)
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size {chunk_size} is out of range")
        self._aead = AESGCM(key)
        self._prefix = nonce_prefix
        self._chunk_size = chunk_size
        self.header = HEADER.pack(
            {
                "magic": MAGIC,
                "version": VERSION,
                "flags": 0,
                "chunk_size": chunk_size,
                "nonce_prefix": self._prefix,
                "reserved": b"\x00",
            }
        )
        self._aad = self.header + associated_data
        self._counter = 0
        self._pending = bytearray()
        self._finished = False

    def _seal(self, plaintext: bytes, last: bool) -> bytes:
        nonce = _nonce(self._prefix, self._counter, last)
        self._counter += 1
        return self._aead.encrypt(nonce, plaintext, self._aad)

    def update(self, data: bytes) -> list[bytes]:
        """Return the chunks that ``data`` completes (one chunk is held back as maybe-last)."""
        if self._finished:
            raise ValueError("stream already finished")
        self._pending += data
        chunks = []
        while len(self._pending) > self._chunk_size:
            piece = bytes(self._pending[: self._chunk_size])
            del self._pending[: self._chunk_size]
            chunks.append(self._seal(piece, last=False))
        return chunks

    def finish(self) -> bytes:
        """Seal and return the last chunk."""
        if self._finished:
            raise ValueError("stream already finished")
        self._finished = True
        return self._seal(bytes(self._pending), last=True)


class StreamOpener:
    """Open the chunks of one stream, in order; ``last`` must mark the final chunk."""

    def __init__(self, key: bytes, header: bytes, associated_data: bytes) -> None:
        _check_key(key)
        self.chunk_size = parse_header(header)
        self._aead = AESGCM(key)
        self._prefix = HEADER.unpack(header)["nonce_prefix"]
        self._aad = header + associated_data
        self._counter = 0
        self._finished = False

    def open_chunk(self, chunk: bytes | memoryview, last: bool) -> bytes:
        if self._finished:
            raise IntegrityError("data found after the last chunk of the stream")
        limit = self.chunk_size + TAG_SIZE
        if len(chunk) < TAG_SIZE or len(chunk) > limit or (not last and len(chunk) != limit):
            raise IntegrityError(f"chunk {self._counter} has a wrong length ({len(chunk)} bytes)")
        try:
            plaintext = self._aead.decrypt(
                _nonce(self._prefix, self._counter, last), chunk, self._aad
            )
        except InvalidTag:
            raise IntegrityError(
                f"chunk {self._counter} failed authentication: the stream was altered, "
                "reordered or truncated, or the key or associated data is wrong"
            ) from None
        self._counter += 1
        self._finished = last
        return plaintext


def seal_stream(
    key: bytes, plaintext: bytes, associated_data: bytes, chunk_size: int = CHUNK_SIZE
) -> bytes:
    """Seal ``plaintext`` into one blob (header ‖ chunks)."""
    sealer = StreamSealer(key, associated_data, chunk_size)
    parts = [sealer.header, *sealer.update(plaintext), sealer.finish()]
    return b"".join(parts)


def _seal_stream_with_nonce_prefix(
    key: bytes, plaintext: bytes, associated_data: bytes, chunk_size: int, nonce_prefix: bytes
) -> bytes:
    """Test-only seam: :func:`seal_stream` with a given nonce prefix.

    Only the known-answer vectors (tests/vectors/detente/generate.py) may call
    it; a test fails if any component package does. Reusing a prefix under one
    key reuses GCM nonces, which is why the public recipes draw it at random.
    """
    if len(nonce_prefix) != 7:
        raise ValueError("the nonce prefix is 7 bytes")
    sealer = StreamSealer.__new__(StreamSealer)
    sealer._start(key, associated_data, chunk_size, nonce_prefix)
    return b"".join([sealer.header, *sealer.update(plaintext), sealer.finish()])


def split_stream(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Split a sealed blob into its header and chunks, by the header's chunk size."""
    if len(blob) < HEADER.size:
        raise FormatError("encrypted stream is shorter than its header")
    header = bytes(blob[: HEADER.size])
    size = parse_header(header) + TAG_SIZE
    body = memoryview(blob)[HEADER.size :]
    if len(body) == 0:
        raise IntegrityError("encrypted stream has no chunks: it was truncated")
    chunks = [bytes(body[i : i + size]) for i in range(0, len(body), size)]
    return header, chunks


def open_chunks(
    key: bytes, header: bytes, chunks: Iterable[bytes], associated_data: bytes
) -> Iterator[bytes]:
    """Open chunks in order, yielding plaintext; the final chunk must carry the last flag."""
    opener = StreamOpener(key, header, associated_data)
    iterator = iter(chunks)
    current = next(iterator, None)
    if current is None:
        raise IntegrityError("encrypted stream has no chunks: it was truncated")
    for following in iterator:
        yield opener.open_chunk(current, last=False)
        current = following
    yield opener.open_chunk(current, last=True)


def open_stream(key: bytes, blob: bytes, associated_data: bytes) -> bytes:
    """Open a blob made by :func:`seal_stream`, or raise IntegrityError/FormatError."""
    header, chunks = split_stream(blob)
    return b"".join(open_chunks(key, header, chunks, associated_data))
