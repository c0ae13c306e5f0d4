"""The encrypted file system (libos.efs) on the real SIMULATION platform, with real files.

Every attack here is what a host can do to the mount's directory: flip bytes,
move blocks, swap, truncate, extend or put back old files, restore an old index.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from libos.config import Mount
from libos.counter import SimCounter, sim_counter
from libos.efs import (
    DEFAULT_BLOCK_SIZE,
    HEADER_SIZE,
    TAG_SIZE,
    EfsFileNotFoundError,
    EfsIsADirectoryError,
    EfsNotADirectoryError,
    EncryptedFS,
    MountKey,
    blob_size,
    merkle_root,
)
from libos.efs.index import MountIndex
from libos.image import Measurement
from libos.runtime import SimRuntime
from libos.sim import SimPlatform
from protocols.errors import FormatError, IntegrityError, PolicyError

SIGNER = hashlib.sha256(b"efs test signer").hexdigest()
OTHER_SIGNER = hashlib.sha256(b"efs test other signer").hexdigest()
ENCLAVE_A = hashlib.sha256(b"efs test enclave A").hexdigest()
ENCLAVE_B = hashlib.sha256(b"efs test enclave B").hexdigest()
MOUNTS = (Mount("/data", "data", "mrenclave"), Mount("/keep", "keep", "mrsigner"))
BS = DEFAULT_BLOCK_SIZE
_BLOB = re.compile(r"[0-9a-f]{40}")


def runtime_for(
    base: Path,
    mrenclave: str = ENCLAVE_A,
    mrsigner: str = SIGNER,
    platform: str = "platform",
    mounts: tuple[Mount, ...] = MOUNTS,
) -> SimRuntime:
    """A fresh enclave runtime on the platform in ``base``: each call is like a restart."""
    measurement = Measurement(mrenclave, mrsigner, "sim", False, 1, 1, 0)
    return SimRuntime(measurement, base / "instance", SimPlatform(base / platform), mounts)


def small_blocks(base: Path, block_size: int = 4096) -> EncryptedFS:
    """The /data mount of enclave A with small blocks, for byte-by-byte tampering."""
    platform = SimPlatform(base / "platform")
    key = MountKey.derive(platform.sealing_secret, ENCLAVE_A, SIGNER, "mrenclave", "/small")
    counter = sim_counter(platform.directory, key.counter_name)
    return EncryptedFS(base / "instance" / "small", key, counter, block_size=block_size)


def blobs(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if _BLOB.fullmatch(p.name)}


def write_and_find(fs: EncryptedFS, path: str, data: bytes) -> Path:
    """Write ``path`` and return the host file that now holds it."""
    before = blobs(fs.host_dir)
    fs.write_bytes(path, data)
    new = blobs(fs.host_dir) - before
    assert len(new) == 1
    return fs.host_dir / new.pop()


def block_range(i: int, size: int, block_size: int = BS) -> slice:
    """Bytes of block i (ciphertext and tag) inside a blob."""
    start = HEADER_SIZE + i * (block_size + TAG_SIZE)
    length = min(block_size, size - i * block_size) + TAG_SIZE
    return slice(start, start + length)


def read_both_ways(fs: EncryptedFS, path: str) -> list[str]:
    """The IntegrityError messages of read_bytes and of a streaming read."""
    messages = []
    with pytest.raises(IntegrityError) as whole:
        fs.read_bytes(path)
    messages.append(str(whole.value))
    with pytest.raises(IntegrityError) as streamed:
        with fs.open(path, "rb") as f:
            f.read()
    messages.append(str(streamed.value))
    return messages


# --- round trips ---------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, 100, BS - 1, BS, BS + 1, 3 * BS, 5 * BS + 17, 4 * 1024 * 1024 + 5]
)
def test_round_trip_sizes_and_restart(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    fs = runtime_for(tmp_path).mount("/data")
    assert fs.write_bytes("dir/file.bin", data) == size
    assert fs.read_bytes("dir/file.bin") == data
    on_host = blobs(fs.host_dir)
    assert len(on_host) == 1
    assert (fs.host_dir / on_host.pop()).stat().st_size == blob_size(size, BS)
    # A restarted enclave (new runtime, new mount object) reads the same bytes.
    again = runtime_for(tmp_path).mount("/data")
    assert again.read_bytes("/data/dir/file.bin") == data
    with again.open("dir/file.bin", "rb") as f:
        assert f.read() == data
        f.seek(size // 2)
        assert f.read(1000) == data[size // 2 : size // 2 + 1000]
        assert f.seek(0, os.SEEK_END) == size and f.read() == b""


def test_streaming_write_in_odd_pieces(tmp_path: Path) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    data = os.urandom(3 * BS + 12345)
    with fs.open("stream.bin", "wb") as f:
        for start in range(0, len(data), 7777):
            f.write(memoryview(data)[start : start + 7777])
        assert f.tell() == len(data)
    assert fs.read_bytes("stream.bin") == data
    chunks = []
    with fs.open("stream.bin", "rb") as f:
        while chunk := f.read(5000):
            chunks.append(chunk)
    assert b"".join(chunks) == data


def test_directory_operations(tmp_path: Path) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    fs.write_bytes("models/m1.json", b"{}")
    fs.write_bytes("models/old/m0.json", b"[]")
    fs.write_bytes("top.txt", b"t")
    assert fs.listdir() == ["models", "top.txt"]
    assert fs.listdir("/data/models") == ["m1.json", "old"]
    assert fs.files() == ["models/m1.json", "models/old/m0.json", "top.txt"]
    assert fs.exists("models") and fs.exists("models/old/m0.json") and fs.exists("/data")
    assert not fs.exists("model") and not fs.is_file("models")
    info = fs.stat("top.txt")
    assert (info.path, info.size) == ("/data/top.txt", 1)
    fs.write_bytes("top.txt", b"two")
    assert fs.stat("top.txt").version > info.version
    fs.remove("models/m1.json")
    assert not fs.exists("models/m1.json") and fs.listdir("models") == ["old"]
    assert len(blobs(fs.host_dir)) == 2  # the removed file's blob is gone from the host

    with pytest.raises(EfsFileNotFoundError, match="/data/nothing"):
        fs.read_bytes("nothing")
    with pytest.raises(FileNotFoundError):  # also the builtin class
        fs.remove("nothing")
    with pytest.raises(EfsIsADirectoryError, match="/data/models is a directory"):
        fs.read_bytes("models")
    with pytest.raises(EfsIsADirectoryError):
        fs.write_bytes("models", b"x")
    with pytest.raises(EfsNotADirectoryError, match=r"/data/top\.txt is a file"):
        fs.write_bytes("top.txt/inner", b"x")
    with pytest.raises(EfsNotADirectoryError):
        fs.listdir("top.txt")
    with pytest.raises(EfsFileNotFoundError):
        fs.listdir("absent")
    for bad in ("../escape", "a//b", "./a", "/other/x", "a/\0", "x" * 300):
        with pytest.raises(FormatError):
            fs.write_bytes(bad, b"x")
    with pytest.raises(FormatError, match="mode"):
        fs.open("top.txt", "r+b")  # type: ignore[call-overload]


def test_mount_object_and_unknown_mount(tmp_path: Path) -> None:
    rt = runtime_for(tmp_path)
    assert rt.mount("/data") is rt.mount("/data")
    assert [m.path for m in rt.mounts] == ["/data", "/keep"]
    with pytest.raises(PolicyError, match=r"no encrypted mount at '/tmp'.*\[\[mounts\]\]"):
        rt.mount("/tmp")
    fs = rt.mount("/data")
    for thing in (fs, MountKey(bytes(32), "mrenclave", "/x")):
        with pytest.raises(TypeError):
            pickle.dumps(thing)
        assert "not shown" in repr(MountKey(bytes(32), "mrenclave", "/x"))


def test_default_mount_is_the_first_configured_and_never_hides_tampering(tmp_path: Path) -> None:
    # The one rule for where the enclave keeps its own files (sealed identity
    # keys, checkpoints): the first [[mounts]] table, or None without one.
    rt = runtime_for(tmp_path)
    assert rt.default_mount() is rt.mount("/data")
    assert runtime_for(tmp_path, mounts=()).default_mount() is None
    reordered = runtime_for(tmp_path, mounts=MOUNTS[::-1])
    assert reordered.default_mount() is reordered.mount("/keep")
    # A mount the host tampered with is an error, not a reason to do without.
    rt.mount("/data").write_bytes("a", b"1")
    (rt.mount("/data").host_dir / "index").unlink()
    with pytest.raises(IntegrityError, match="index is missing"):
        runtime_for(tmp_path).default_mount()


# --- what the host sees -------------------------------------------------------------


def test_host_sees_no_plaintext_and_no_names(tmp_path: Path) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    canary = b"CANARY-7f3a9c-plaintext-row "
    names = ["customers-canary/alice-7f3a9c.csv", "models/hidden-model-7f3a9c.json"]
    for name in names:
        fs.write_bytes(name, canary * 5000)
    with fs.open("streamed-7f3a9c.bin", "wb") as f:
        f.write(canary * 100)
    needles = [canary, b"7f3a9c", b"CANARY", b"alice", b"customers", b"models", b"hidden"]
    # Everything the host holds: the mount directory and the platform directory.
    for root in (fs.host_dir, tmp_path / "platform"):
        for path in root.rglob("*"):
            assert not any(n.decode() in path.name for n in needles), path
            if path.is_file():
                content = path.read_bytes()
                assert not any(n in content for n in needles), path
                assert not any(n.hex().encode() in content for n in needles), path
    assert fs.read_bytes(names[0]) == canary * 5000


def test_same_content_gives_unrelated_blobs(tmp_path: Path) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    a = write_and_find(fs, "a", b"same" * 1000).read_bytes()
    b = write_and_find(fs, "b", b"same" * 1000).read_bytes()
    a2 = write_and_find(fs, "a", b"same" * 1000).read_bytes()
    body = slice(HEADER_SIZE, HEADER_SIZE + 64)
    assert len({a[body], b[body], a2[body]}) == 3  # fresh key per version: no equality leaks


# --- tampering --------------------------------------------------------------------


def test_single_byte_changes_are_detected(tmp_path: Path) -> None:
    fs = small_blocks(tmp_path)
    data = os.urandom(4096 + 900)
    blob = write_and_find(fs, "f", data)
    good = blob.read_bytes()
    # Every byte of the header and of both tags, the first and last byte of
    # each ciphertext block, and a spread of bytes in between.
    blocks = [block_range(0, len(data), 4096), block_range(1, len(data), 4096)]
    positions = set(range(HEADER_SIZE))
    for b in blocks:
        positions |= set(range(b.stop - TAG_SIZE, b.stop)) | {b.start, b.stop - TAG_SIZE - 1}
        positions |= set(range(b.start, b.stop, 61))
    assert max(positions) == len(good) - 1
    with open(blob, "r+b", buffering=0) as host_file:
        for position in sorted(positions):
            host_file.seek(position)
            host_file.write(bytes([good[position] ^ 0x01]))
            with pytest.raises(IntegrityError, match=r"^/small/f"):
                fs.read_bytes("f")
            host_file.seek(position)
            host_file.write(good[position : position + 1])
    assert blob.read_bytes() == good
    assert fs.read_bytes("f") == data


def test_tampered_block_is_named(tmp_path: Path) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    size = 3 * BS
    blob = write_and_find(fs, "model.bin", os.urandom(size))
    raw = bytearray(blob.read_bytes())
    raw[block_range(1, size).start + 100] ^= 0xFF  # a ciphertext byte of block 1
    blob.write_bytes(raw)
    for message in read_both_ways(fs, "model.bin"):
        assert "/data/model.bin: block 1 of 3 failed authentication" in message
        assert "altered" in message
    raw = bytearray(blob.read_bytes())
    raw[block_range(1, size).start + 100] ^= 0xFF
    raw[block_range(2, size).stop - 1] ^= 0x01  # now a tag byte of block 2
    blob.write_bytes(raw)
    for message in read_both_ways(fs, "model.bin"):
        assert "block 2 of 3 failed authentication" in message


def test_tampered_header(tmp_path: Path) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    blob = write_and_find(fs, "h", os.urandom(1000))
    good = blob.read_bytes()
    cases = {
        # Layout: magic 0-4, format 5, reserved 6-7, block size 8-11, file id 12-27,
        # version 28-35, size 36-43, salt 44-75, Merkle root 76-107, MAC 108-139.
        0: "header was altered",
        6: "header was altered",
        9: "does not match the index",
        20: "swapped or replaced",
        35: "rolled back: the host put back version 0, the index says version 1",
        40: "does not match the index",
        60: "does not match the index",
        100: "does not match the index",
        HEADER_SIZE - 1: "header was altered",
    }
    for offset, problem in cases.items():
        bad = bytearray(good)
        bad[offset] ^= 0x01
        blob.write_bytes(bad)
        for message in read_both_ways(fs, "h"):
            assert message.startswith("/data/h") and problem in message, message


def test_blocks_swapped_within_a_file(tmp_path: Path) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    size = 3 * BS
    blob = write_and_find(fs, "weights.bin", os.urandom(size))
    raw = bytearray(blob.read_bytes())
    b0, b1 = block_range(0, size), block_range(1, size)
    raw[b0], raw[b1] = raw[b1], raw[b0]
    blob.write_bytes(raw)
    for message in read_both_ways(fs, "weights.bin"):
        assert "/data/weights.bin: block 0 of 3 holds block 1 of the same file" in message
        assert "reordered" in message


def test_blocks_swapped_between_files(tmp_path: Path) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    size = 2 * BS
    blob_a = write_and_find(fs, "a.bin", os.urandom(size))
    blob_b = write_and_find(fs, "b.bin", os.urandom(size))
    raw_a, raw_b = bytearray(blob_a.read_bytes()), blob_b.read_bytes()
    raw_a[block_range(1, size)] = raw_b[block_range(1, size)]
    blob_a.write_bytes(raw_a)
    for message in read_both_ways(fs, "a.bin"):
        assert "/data/a.bin: block 1 of 2 holds block 1 of /data/b.bin" in message
        assert "copied blocks between files" in message
    assert len(fs.read_bytes("b.bin")) == size


def test_whole_files_swapped(tmp_path: Path) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    blob_a = write_and_find(fs, "alice.csv", b"a" * 5000)
    blob_b = write_and_find(fs, "bob.csv", b"b" * 5000)
    raw_a, raw_b = blob_a.read_bytes(), blob_b.read_bytes()
    blob_a.write_bytes(raw_b)
    blob_b.write_bytes(raw_a)
    messages = read_both_ways(fs, "alice.csv") + read_both_ways(fs, "bob.csv")
    assert "/data/alice.csv holds the content of /data/bob.csv" in messages[0]
    assert "/data/bob.csv holds the content of /data/alice.csv" in messages[2]
    assert all("swapped or replaced" in m for m in messages)


@pytest.mark.parametrize("cut", [1, TAG_SIZE, TAG_SIZE + BS, 2 * (BS + TAG_SIZE)])
def test_truncation(tmp_path: Path, cut: int) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    size = 2 * BS + 500
    blob = write_and_find(fs, "t.bin", os.urandom(size))
    raw = blob.read_bytes()
    blob.write_bytes(raw[: len(raw) - cut])
    for message in read_both_ways(fs, "t.bin"):
        assert message.startswith("/data/t.bin was truncated"), message
        assert f"{cut} of its {len(raw)} encrypted bytes are missing" in message
    blob.write_bytes(raw[:10])
    for message in read_both_ways(fs, "t.bin"):
        assert message.startswith("/data/t.bin was truncated"), message


def test_extension(tmp_path: Path) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    size = BS
    blob = write_and_find(fs, "e.bin", os.urandom(size))
    raw = blob.read_bytes()
    # A whole extra block: a copy of the last one, tag included.
    blob.write_bytes(raw + raw[block_range(0, size)])
    for message in read_both_ways(fs, "e.bin"):
        assert message.startswith("/data/e.bin was extended"), message
        assert f"{BS + TAG_SIZE} bytes were appended" in message
    blob.write_bytes(raw + b"\0")
    assert "1 bytes were appended" in read_both_ways(fs, "e.bin")[0]


def test_deleted_blob(tmp_path: Path) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    write_and_find(fs, "gone", b"x").unlink()
    with pytest.raises(IntegrityError, match="/data/gone: its encrypted file is missing"):
        fs.read_bytes("gone")


# --- rollback -------------------------------------------------------------------


def test_rolled_back_file(tmp_path: Path) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    v1 = write_and_find(fs, "checkpoint", b"round 10" * 1000).read_bytes()
    v2_path = write_and_find(fs, "checkpoint", b"round 20" * 1000)
    fs.write_bytes("other", b"later commits do not matter")
    v2_path.write_bytes(v1)  # the host puts the old version back in place
    for message in read_both_ways(fs, "checkpoint"):
        assert "/data/checkpoint was rolled back" in message
        assert "put back version 1, the index says version 2" in message
    # Also after a restart.
    again = runtime_for(tmp_path).mount("/data")
    with pytest.raises(IntegrityError, match="rolled back"):
        again.read_bytes("checkpoint")


def test_rolled_back_index(tmp_path: Path) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    fs.write_bytes("model", b"v1")
    snapshot = {p.name: p.read_bytes() for p in fs.host_dir.iterdir() if p.is_file()}
    fs.write_bytes("model", b"v2")
    fs.write_bytes("extra", b"e")
    # The host restores the whole directory as it was after the first commit.
    for p in list(fs.host_dir.iterdir()):
        p.unlink()
    for name, content in snapshot.items():
        (fs.host_dir / name).write_bytes(content)
    with pytest.raises(IntegrityError) as info:
        runtime_for(tmp_path).mount("/data")
    message = str(info.value)
    assert "encrypted mount /data" in message and "was rolled back" in message
    assert "index is version 1 but the platform counter is at 3" in message


def test_index_deleted_or_counter_reset(tmp_path: Path) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    fs.write_bytes("a", b"1")
    fs.write_bytes("b", b"2")
    index = (fs.host_dir / "index").read_bytes()
    counter = SimCounter(tmp_path / "platform" / "counters", fs._mount.counter.name)
    counter_file = counter.path.read_text()

    (fs.host_dir / "index").unlink()
    with pytest.raises(IntegrityError, match="index is missing but the platform counter is at 2"):
        runtime_for(tmp_path).mount("/data")
    (fs.host_dir / "index").write_bytes(index)

    counter.path.write_text(counter_file.replace("\n2\n", "\n1\n"))
    with pytest.raises(IntegrityError, match=r"version 2, ahead of the platform counter \(1\)"):
        runtime_for(tmp_path).mount("/data")

    counter.path.unlink()
    with pytest.raises(IntegrityError, match="no monotonic counter for this mount"):
        runtime_for(tmp_path).mount("/data")

    counter.path.write_text("not a counter")
    with pytest.raises(IntegrityError, match="is not a counter file"):
        runtime_for(tmp_path).mount("/data")

    counter.path.write_text(counter_file)
    assert runtime_for(tmp_path).mount("/data").read_bytes("b") == b"2"


def test_tampered_or_foreign_index(tmp_path: Path) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    fs.write_bytes("a", b"1")
    index = fs.host_dir / "index"
    good = index.read_bytes()
    for offset, problem in [(0, "not an EFS index"), (len(good) - 1, "altered")]:
        bad = bytearray(good)
        bad[offset] ^= 1
        index.write_bytes(bad)
        with pytest.raises(IntegrityError, match=problem):
            runtime_for(tmp_path).mount("/data")
    index.write_bytes(good)
    # The index of the /keep mount dropped into /data's directory.
    keep = runtime_for(tmp_path).mount("/keep")
    keep.write_bytes("k", b"k")
    index.write_bytes((keep.host_dir / "index").read_bytes())
    with pytest.raises(IntegrityError, match="'mrsigner' key policy"):
        runtime_for(tmp_path).mount("/data")


# --- keys and identities --------------------------------------------------------------


def test_other_mrenclave_cannot_open_an_mrenclave_mount(tmp_path: Path) -> None:
    runtime_for(tmp_path).mount("/data").write_bytes("model", b"enclave A's model")
    with pytest.raises(IntegrityError) as info:
        runtime_for(tmp_path, mrenclave=ENCLAVE_B).mount("/data")
    message = str(info.value)
    assert "written under another key: by another enclave (mrenclave policy" in message
    assert "key_policy = 'mrsigner'" in message
    # The same image on another platform cannot either.
    other = tmp_path / "other-machine"
    other.mkdir()
    (other / "instance").symlink_to(tmp_path / "instance")
    with pytest.raises(IntegrityError, match="another platform"):
        runtime_for(other).mount("/data")
    assert runtime_for(tmp_path).mount("/data").read_bytes("model") == b"enclave A's model"


def test_same_signer_opens_an_mrsigner_mount_other_signer_does_not(tmp_path: Path) -> None:
    runtime_for(tmp_path).mount("/keep").write_bytes("identity.key", b"survives upgrades")
    upgraded = runtime_for(tmp_path, mrenclave=ENCLAVE_B).mount("/keep")
    assert upgraded.read_bytes("identity.key") == b"survives upgrades"
    upgraded.write_bytes("identity.key", b"rotated by the new release")
    assert runtime_for(tmp_path).mount("/keep").read_bytes("identity.key") == (
        b"rotated by the new release"
    )
    with pytest.raises(IntegrityError, match="only images of the same signer"):
        runtime_for(tmp_path, mrenclave=ENCLAVE_B, mrsigner=OTHER_SIGNER).mount("/keep")


def test_mount_path_is_part_of_the_key(tmp_path: Path) -> None:
    runtime_for(tmp_path).mount("/data").write_bytes("a", b"1")
    moved = (Mount("/elsewhere", "data", "mrenclave"),)
    with pytest.raises(IntegrityError, match="another mount path"):
        runtime_for(tmp_path, mounts=moved).mount("/elsewhere")


def test_mount_key_info_holds_the_raw_measurement() -> None:
    # MRENCLAVE and MRSIGNER come as hex; the HKDF info holds their 32 raw
    # bytes (docs/libos.md), so mounts written before the hex convention open.
    secret = bytes(range(32))
    info = b"detente/v1 efs mount mrsigner " + bytes.fromhex(SIGNER) + b" /keep"
    by_hand = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)
    derived = MountKey.derive(secret, ENCLAVE_A, SIGNER, "mrsigner", "/keep")
    assert derived.key_id == MountKey(by_hand, "mrsigner", "/keep").key_id
    raw: Any = bytes.fromhex(ENCLAVE_A)  # the old convention: refused, not misread
    with pytest.raises(FormatError, match="MRENCLAVE or MRSIGNER"):
        MountKey.derive(secret, raw, SIGNER, "mrenclave", "/x")


# --- atomicity, failures, concurrency ------------------------------------------------------


def test_failure_before_commit_keeps_the_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    fs.write_bytes("model", b"old")
    before = sorted(p.name for p in fs.host_dir.iterdir())

    def no_counter(self: SimCounter) -> int:
        raise OSError("simulated failure: the platform counter is unavailable")

    monkeypatch.setattr(SimCounter, "increment", no_counter)
    with pytest.raises(OSError, match="simulated failure"):
        fs.write_bytes("model", os.urandom(3 * BS))
    monkeypatch.undo()
    assert fs.read_bytes("model") == b"old"
    assert sorted(p.name for p in fs.host_dir.iterdir()) == before  # nothing left behind
    assert runtime_for(tmp_path).mount("/data").read_bytes("model") == b"old"


def test_exception_inside_a_with_block_discards_the_write(tmp_path: Path) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    fs.write_bytes("model", b"old")
    with pytest.raises(RuntimeError, match="training crashed"):
        with fs.open("model", "wb") as f:
            f.write(os.urandom(2 * BS))
            raise RuntimeError("training crashed")
    writer = fs.open("model", "wb")
    writer.write(b"never closed")
    del writer  # dropped without close(): discarded, never committed
    assert fs.read_bytes("model") == b"old"
    assert not [p for p in fs.host_dir.iterdir() if p.name.endswith(".staged")]


def test_index_write_failure_after_the_counter_moved_is_finished_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    fs.write_bytes("model", b"old")
    real = MountIndex._write_index
    calls = []

    def fail_once(self: MountIndex, blob: bytes) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("simulated failure: disk full")
        real(self, blob)

    monkeypatch.setattr(MountIndex, "_write_index", fail_once)
    with pytest.raises(OSError, match="disk full"):
        fs.write_bytes("model", b"new")
    # The counter moved, so the commit point was passed: the next operation
    # writes the index again, and the new version stands (as after a crash
    # that is finished by roll-forward).
    assert fs.read_bytes("model") == b"new"
    assert runtime_for(tmp_path).mount("/data").read_bytes("model") == b"new"


def test_two_mount_objects_share_one_directory(tmp_path: Path) -> None:
    # Two processes of one enclave each have their own EncryptedFS object.
    first = runtime_for(tmp_path).mount("/data")
    second = runtime_for(tmp_path).mount("/data")
    first.write_bytes("from-first", b"1")
    second.write_bytes("from-second", b"2")
    assert first.files() == ["from-first", "from-second"]
    assert second.read_bytes("from-first") == b"1"
    first.remove("from-second")
    assert second.files() == ["from-first"]


def test_threads_write_concurrently(tmp_path: Path) -> None:
    fs = runtime_for(tmp_path).mount("/data")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for k in range(5):
                fs.write_bytes(f"t{n}/f{k}", bytes([n, k]) * 1000)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert fs.version == 20
    again = runtime_for(tmp_path).mount("/data")
    assert all(
        again.read_bytes(f"t{n}/f{k}") == bytes([n, k]) * 1000 for n in range(4) for k in range(5)
    )


# --- building blocks -------------------------------------------------------------------


def _rfc6962(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, written as the RFC defines it (recursive split)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _rfc6962(leaves[:k]) + _rfc6962(leaves[k:])).digest()


def test_merkle_root_is_rfc6962() -> None:
    for n in range(0, 34):
        tags = [os.urandom(TAG_SIZE) for _ in range(n)]
        assert merkle_root(b"".join(tags), n) == _rfc6962(tags)
    with pytest.raises(FormatError):
        merkle_root(b"\0" * 15, 1)


def test_sim_counter(tmp_path: Path) -> None:
    counter = SimCounter(tmp_path / "counters", "c1")
    assert counter.read() is None
    with pytest.raises(IntegrityError, match="does not exist"):
        counter.increment()
    assert counter.create() == 0 and counter.create() == 0
    assert [counter.increment() for _ in range(3)] == [1, 2, 3]
    assert SimCounter(tmp_path / "counters", "c1").read() == 3
    assert "SIMULATION" in counter.path.read_text()
    with pytest.raises(IntegrityError, match="name"):
        SimCounter(tmp_path, "../escape")


def test_block_size_is_validated(tmp_path: Path) -> None:
    for size in (1024, 5000, 64 * 1024 * 1024):
        with pytest.raises(FormatError, match="block size"):
            small_blocks(tmp_path, size)
