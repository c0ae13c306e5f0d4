"""STREAM AEAD (protocols/stream.py): round trips and every way to tamper with a blob."""

from __future__ import annotations

import os

import pytest

from protocols import stream
from protocols.errors import DetenteError, FormatError, IntegrityError

CHUNK = 64
KEY = bytes(range(32))
AD = b"dataset ds-1"
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 5 * CHUNK + 17]


def seal(plaintext: bytes, key: bytes = KEY, ad: bytes = AD) -> bytes:
    return stream.seal_stream(key, plaintext, ad, chunk_size=CHUNK)


def rebuild(header: bytes, chunks: list[bytes]) -> bytes:
    return header + b"".join(chunks)


def several() -> tuple[bytes, bytes, list[bytes]]:
    """A 4-chunk stream: plaintext, header, chunks."""
    plaintext = os.urandom(3 * CHUNK + 10)
    header, chunks = stream.split_stream(seal(plaintext))
    assert len(chunks) == 4
    return plaintext, header, chunks


@pytest.mark.parametrize("size", SIZES)
def test_round_trip(size: int) -> None:
    plaintext = os.urandom(size)
    blob = seal(plaintext)
    # Layout: header, full chunks, then a last chunk of 0…CHUNK bytes (+ tags).
    full, rest = divmod(size, CHUNK)
    if rest == 0 and full > 0:
        full, rest = full - 1, CHUNK
    expected = stream.HEADER.size + full * (CHUNK + stream.TAG_SIZE) + rest + stream.TAG_SIZE
    assert len(blob) == expected
    assert stream.open_stream(KEY, blob, AD) == plaintext


def test_default_chunk_size_round_trip() -> None:
    plaintext = os.urandom(100)
    blob = stream.seal_stream(KEY, plaintext, AD)
    assert stream.parse_header(blob[: stream.HEADER.size]) == stream.CHUNK_SIZE
    assert stream.open_stream(KEY, blob, AD) == plaintext


def test_header_layout() -> None:
    blob = seal(b"abc")
    header = blob[: stream.HEADER.size]
    assert stream.HEADER.size == 24
    assert header[0:8] == b"DTNTSTRM"
    assert int.from_bytes(header[8:10], "little") == 1
    assert int.from_bytes(header[10:12], "little") == 0
    assert int.from_bytes(header[12:16], "little") == CHUNK
    assert header[23:24] == b"\x00"
    # Two seals of the same plaintext use fresh nonce prefixes.
    assert seal(b"abc")[16:23] != header[16:23]


def test_nonce_is_prefix_counter_last_flag() -> None:
    """Open a chunk by hand with the documented nonce: prefix ‖ u32be counter ‖ flag."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    _, header, chunks = several()
    prefix = header[16:23]
    aead = AESGCM(KEY)
    first = aead.decrypt(prefix + (0).to_bytes(4, "big") + b"\x00", chunks[0], header + AD)
    last = aead.decrypt(prefix + (3).to_bytes(4, "big") + b"\x01", chunks[3], header + AD)
    assert len(first) == CHUNK
    assert len(last) == 10


@pytest.mark.parametrize("pieces", [[1] * 200, [63, 1, 64, 65, 7], [300], [0, 64, 0, 64, 0]])
def test_incremental_sealer_matches_seal_stream_layout(pieces: list[int]) -> None:
    plaintext = os.urandom(sum(pieces))
    sealer = stream.StreamSealer(KEY, AD, chunk_size=CHUNK)
    out = [sealer.header]
    offset = 0
    for n in pieces:
        out.extend(sealer.update(plaintext[offset : offset + n]))
        offset += n
    out.append(sealer.finish())
    blob = b"".join(out)
    reference = seal(plaintext)
    assert len(blob) == len(reference)
    header, chunks = stream.split_stream(blob)
    ref_header, ref_chunks = stream.split_stream(reference)
    assert [len(c) for c in chunks] == [len(c) for c in ref_chunks]
    assert header[:16] == ref_header[:16]  # same magic, version, flags, chunk size
    assert stream.open_stream(KEY, blob, AD) == plaintext
    # Chunks handed out one by one open with open_chunks too.
    assert b"".join(stream.open_chunks(KEY, header, out[1:], AD)) == plaintext


def test_sealer_update_consumes_data_even_if_result_not_iterated() -> None:
    """A caller that ignores update()'s return value (nothing to emit yet) must not lose data.

    update() is a generator today, so data passed to it is silently dropped unless the
    caller iterates the result; the stream then verifies but is missing plaintext.
    """
    sealer = stream.StreamSealer(KEY, AD, chunk_size=CHUNK)
    sealer.update(b"x" * 10)  # fewer bytes than a chunk: nothing to emit
    blob = sealer.header + sealer.finish()
    assert stream.open_stream(KEY, blob, AD) == b"x" * 10


def test_sealer_refuses_use_after_finish() -> None:
    sealer = stream.StreamSealer(KEY, AD, chunk_size=CHUNK)
    sealer.finish()
    with pytest.raises(ValueError, match="already finished"):
        sealer.finish()
    with pytest.raises(ValueError, match="already finished"):
        list(sealer.update(b"more"))


@pytest.mark.parametrize("bad", [0, 15, stream.MAX_CHUNK_SIZE + 1])
def test_sealer_refuses_bad_chunk_size(bad: int) -> None:
    with pytest.raises(ValueError, match="chunk size"):
        stream.StreamSealer(KEY, AD, chunk_size=bad)


def test_bad_key_length_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        stream.seal_stream(b"short", b"", AD)
    with pytest.raises(ValueError, match="32 bytes"):
        stream.open_stream(b"short", seal(b"abc"), AD)


# --- tampering ---------------------------------------------------------------


@pytest.mark.parametrize("chunk_index", [0, 1, 2, 3])
@pytest.mark.parametrize("where", [0, 17, -1])
def test_flipped_byte_in_any_chunk(chunk_index: int, where: int) -> None:
    _, header, chunks = several()
    chunk = bytearray(chunks[chunk_index])
    chunk[where] ^= 0x01
    chunks[chunk_index] = bytes(chunk)
    with pytest.raises(IntegrityError, match=f"chunk {chunk_index} failed authentication"):
        stream.open_stream(KEY, rebuild(header, chunks), AD)


def test_every_single_bit_flip_is_rejected() -> None:
    blob = seal(os.urandom(2 * CHUNK + 5))
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x80
        with pytest.raises((IntegrityError, FormatError)):
            stream.open_stream(KEY, bytes(tampered), AD)


@pytest.mark.parametrize(
    ("offset", "error", "message"),
    [
        (0, FormatError, "bad magic"),
        (7, FormatError, "bad magic"),
        (8, FormatError, "unsupported stream version"),
        (10, FormatError, "reserved bits"),
        (15, FormatError, "chunk size .* out of range"),
        (16, IntegrityError, "failed authentication"),  # nonce prefix
        (22, IntegrityError, "failed authentication"),
        (23, FormatError, "reserved bits"),
    ],
)
def test_flipped_byte_in_header(offset: int, error: type[Exception], message: str) -> None:
    blob = bytearray(seal(os.urandom(100)))
    blob[offset] ^= 0x80  # at offset 15 this makes the chunk size 2**31 + 64: out of range
    with pytest.raises(error, match=message):
        stream.open_stream(KEY, bytes(blob), AD)


def test_chunk_size_change_in_header_fails_authentication() -> None:
    blob = bytearray(seal(os.urandom(100)))
    blob[12] ^= 0x01  # 64 -> 65: still in range, but the header is authenticated
    with pytest.raises(IntegrityError):
        stream.open_stream(KEY, bytes(blob), AD)


@pytest.mark.parametrize("drop", [1, 2])
def test_dropped_middle_chunk(drop: int) -> None:
    _, header, chunks = several()
    del chunks[drop]
    with pytest.raises(IntegrityError, match=f"chunk {drop} failed authentication"):
        stream.open_stream(KEY, rebuild(header, chunks), AD)


def test_dropped_last_chunk_is_truncation() -> None:
    _, header, chunks = several()
    # The new final chunk was sealed as "not last": opening it as last fails.
    with pytest.raises(IntegrityError, match="chunk 2 failed authentication"):
        stream.open_stream(KEY, rebuild(header, chunks[:-1]), AD)


def test_all_chunks_dropped() -> None:
    _, header, _ = several()
    with pytest.raises(IntegrityError, match="no chunks"):
        stream.open_stream(KEY, header, AD)
    with pytest.raises(IntegrityError, match="no chunks"):
        list(stream.open_chunks(KEY, header, [], AD))


def test_blob_shorter_than_header() -> None:
    with pytest.raises(FormatError, match="shorter than its header"):
        stream.open_stream(KEY, seal(b"abc")[:23], AD)


@pytest.mark.parametrize("order", [[1, 0, 2, 3], [0, 2, 1, 3], [0, 1, 3, 2], [3, 2, 1, 0]])
def test_reordered_chunks(order: list[int]) -> None:
    _, header, chunks = several()
    with pytest.raises(IntegrityError, match=r"failed authentication|wrong length"):
        stream.open_stream(KEY, rebuild(header, [chunks[i] for i in order]), AD)


@pytest.mark.parametrize("cut", [1, 5, 16, 17, CHUNK + 16, CHUNK + 17, 2 * CHUNK])
def test_truncated_blob(cut: int) -> None:
    blob = seal(os.urandom(3 * CHUNK + 10))
    with pytest.raises(IntegrityError, match=r"failed authentication|wrong length"):
        stream.open_stream(KEY, blob[:-cut], AD)


def test_appended_extra_chunk() -> None:
    _, header, chunks = several()
    with pytest.raises(IntegrityError, match="chunk 3 failed authentication"):
        stream.open_stream(KEY, rebuild(header, [*chunks, chunks[1]]), AD)


def test_data_after_last_chunk_rejected_by_opener() -> None:
    _, header, chunks = several()
    opener = stream.StreamOpener(KEY, header, AD)
    for c in chunks[:-1]:
        opener.open_chunk(c, last=False)
    opener.open_chunk(chunks[-1], last=True)
    with pytest.raises(IntegrityError, match="after the last chunk"):
        opener.open_chunk(chunks[0], last=False)


def test_empty_final_chunk_appended_after_full_last_chunk() -> None:
    """A full last chunk followed by an attacker's 16-byte chunk must still fail."""
    header, chunks = stream.split_stream(seal(os.urandom(2 * CHUNK)))
    assert len(chunks) == 2
    with pytest.raises(IntegrityError):
        stream.open_stream(KEY, rebuild(header, [*chunks, os.urandom(16)]), AD)


def test_chunk_spliced_from_another_stream_with_same_key() -> None:
    _, header_a, chunks_a = several()
    _, _, chunks_b = several()
    spliced = [chunks_a[0], chunks_b[1], chunks_a[2], chunks_a[3]]
    with pytest.raises(IntegrityError, match="chunk 1 failed authentication"):
        stream.open_stream(KEY, rebuild(header_a, spliced), AD)


def test_header_swapped_from_another_stream_with_same_key() -> None:
    _, header_a, _ = several()
    _, _, chunks_b = several()
    with pytest.raises(IntegrityError, match="chunk 0 failed authentication"):
        stream.open_stream(KEY, rebuild(header_a, chunks_b), AD)


def test_wrong_associated_data() -> None:
    blob = seal(b"rows of dataset one")
    with pytest.raises(IntegrityError, match="associated data is wrong"):
        stream.open_stream(KEY, blob, b"dataset ds-2")


def test_wrong_key() -> None:
    blob = seal(b"rows of dataset one")
    with pytest.raises(IntegrityError, match="key or associated data is wrong"):
        stream.open_stream(bytes(32), blob, AD)


def test_errors_are_detente_errors() -> None:
    assert issubclass(IntegrityError, DetenteError)
    assert issubclass(FormatError, DetenteError)
