"""The spool file an upload seals into: private while it exists, gone afterwards."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from party_client.spool import SealedSpool, remove_stale
from protocols import stream


def test_the_spool_is_mode_0600_in_a_0700_folder_and_removed_after_use(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    key = secrets.token_bytes(32)
    plaintext = secrets.token_bytes(10_000)
    with SealedSpool(folder, key, b"ds", chunk_size=1024) as spool:
        assert spool.path.parent == folder
        assert spool.path.stat().st_mode & 0o777 == 0o600
        assert folder.stat().st_mode & 0o777 == 0o700
        spool.write(plaintext[:3000])
        spool.write(memoryview(plaintext)[3000:])
        size, digest = spool.finish()
        blob = b"".join(spool.pieces(4096))
        assert spool.plaintext_within(size) == len(plaintext)
    assert not spool.path.exists() and list(folder.iterdir()) == []
    assert len(blob) == size and hashlib.sha256(blob).hexdigest() == digest
    assert stream.open_stream(key, blob, b"ds") == plaintext


def test_the_spool_is_removed_when_sealing_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), SealedSpool(tmp_path, secrets.token_bytes(32), b"d") as spool:
        spool.write(b"x" * 5000)
        raise RuntimeError("validation failed")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_others_could_read_is_made_private(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    with SealedSpool(folder, secrets.token_bytes(32), b"d"):
        assert folder.stat().st_mode & 0o777 == 0o700


def test_whole_chunks_tell_how_much_plaintext_was_sent(tmp_path: Path) -> None:
    with SealedSpool(tmp_path, secrets.token_bytes(32), b"d", chunk_size=100) as spool:
        spool.write(b"y" * 450)
        spool.finish()
        header, sealed = stream.HEADER.size, 100 + stream.TAG_SIZE
        assert spool.plaintext_within(header) == 0
        assert spool.plaintext_within(header + sealed - 1) == 0
        assert spool.plaintext_within(header + 2 * sealed) == 200
        assert spool.plaintext_within(spool.size) == 450


def test_spools_of_crashed_uploads_are_removed_by_the_next(tmp_path: Path) -> None:
    """A process that died left its spool (ciphertext under a key gone with it)."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    left = tmp_path / f"upload-{pid}-0123456789abcdef.sealed"
    left.write_bytes(b"old ciphertext")
    mine = tmp_path / f"upload-{os.getpid()}-fedcba9876543210.sealed"
    mine.write_bytes(b"a running upload of this process")
    other = tmp_path / "notes.txt"
    other.write_text("not a spool")
    remove_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name])
