"""Uploads cut off midway: the temp files of a write that died are removed when a
BlobStore starts, the file of a write still in progress (its writer holds an
flock) is kept, and nothing half-uploaded is ever listed."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from coordinator_testkit import Harness, Party, SealedDataset, seal_dataset

from coordinator.blobs import BlobStore
from coordinator.handler import issue_enrollment
from coordinator.server import default_db_url
from coordinator.store import SqlStore
from protocols import tls
from protocols.request_auth import RequestSigner
from protocols.wire.v1 import coordinator_pb2, coordinator_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def incoming(root: Path) -> list[Path]:
    return sorted(root.glob(".incoming-*"))


def blob_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".incoming-")]


# --------------------------------------------------------------------------- BlobStore


def test_stale_incoming_files_are_removed_at_start(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    blobs = BlobStore(root)
    sha, _ = blobs.put(b"a committed blob")
    for name in (".incoming-crashed1", ".incoming-crashed2"):
        (root / name).write_bytes(b"half a ciphertext")
    BlobStore(root)
    assert incoming(root) == []
    assert blobs.read(sha) == b"a committed blob"  # real blobs are untouched


def test_a_live_writer_is_kept_and_still_commits(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    blobs = BlobStore(root)
    stale = root / ".incoming-crashed"
    stale.write_bytes(b"stale")
    with blobs.writer() as live:
        live.write(b"first half, ")
        (live_file,) = set(incoming(root)) - {stale}
        BlobStore(root)  # a second coordinator starting on the same folder
        assert incoming(root) == [live_file]
        live.write(b"second half")
        sha, size = live.commit()
    assert blobs.read(sha) == b"first half, second half"
    assert size == len(b"first half, second half")
    assert incoming(root) == []


def test_the_file_of_a_closed_writer_is_stale(tmp_path: Path) -> None:
    """Once its writer is gone (its flock released), the file is removed at start."""
    root = tmp_path / "blobs"
    writer = BlobStore(root).writer()
    writer.write(b"cut off")
    assert writer._file is not None
    writer._file.close()  # as if the process died: the lock goes, the file stays
    assert len(incoming(root)) == 1
    BlobStore(root)
    assert incoming(root) == []


class _FullDisk:
    """A blob file on a disk that fills up after ``room`` bytes."""

    def __init__(self, real: Any, room: int) -> None:
        self._real, self._room = real, room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(data)
        return int(self._real.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.mark.parametrize("pieces", [3, 40])
def test_a_failed_write_behind_is_raised_and_leaves_nothing(tmp_path: Path, pieces: int) -> None:
    """Pieces are written on the writer's own thread; its failure still reaches the
    caller (by a later write, or by commit) and nothing is stored."""
    root = tmp_path / "blobs"
    writer = BlobStore(root).writer()
    writer._file = _FullDisk(writer._file, 2 << 20)  # type: ignore[assignment]
    with pytest.raises(OSError, match="No space left"):
        for _ in range(pieces):
            writer.write(b"c" * (1 << 20))
        writer.commit()
    assert incoming(root) == [] and blob_files(root) == []
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"more")


def test_pieces_written_behind_keep_their_order(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    pieces = [bytes([n]) * (1000 + n) for n in range(200)]
    sha, size = blobs.put_stream(pieces)
    assert blobs.read(sha) == b"".join(pieces) and size == sum(map(len, pieces))


# --------------------------------------------------------------------------- uploads


def cut_off_upload(
    sealed: SealedDataset, sent: threading.Event, go_on: threading.Event
) -> Iterator[coordinator_pb2.UploadDatasetRequest]:
    """The manifest and the first piece of ciphertext, then wait (at most 20 s) and fail."""
    yield coordinator_pb2.UploadDatasetRequest(manifest=sealed.manifest_bytes)
    yield coordinator_pb2.UploadDatasetRequest(ciphertext=sealed.ciphertext[:4096])
    sent.set()
    go_on.wait(20)
    raise ConnectionResetError("the party's link dropped")


def test_an_upload_cut_off_by_the_party_leaves_nothing(
    coord: Harness, home: Path, alice: Party
) -> None:
    coord.register(alice)
    sealed = seal_dataset(alice, "alice-2024", plaintext=b"x" * 200_000)
    sent, go_on = threading.Event(), threading.Event()
    call = coord.stub.UploadDataset.future(cut_off_upload(sealed, sent, go_on))
    assert sent.wait(10)
    go_on.set()
    with pytest.raises(grpc.RpcError):
        call.result(timeout=10)
    deadline = time.monotonic() + 5  # the server side ends after the client's cancel
    while incoming(home / "blobs") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert incoming(home / "blobs") == []
    assert blob_files(home / "blobs") == []
    listed = coord.stub.ListDatasets(coordinator_pb2.ListDatasetsRequest()).datasets
    assert list(listed) == []


def test_a_coordinator_killed_mid_upload_leaves_nothing_listed(
    tmp_path: Path, alice: Party
) -> None:
    """A real coordinator process is killed (SIGKILL) while it receives an upload."""
    home, port_file = tmp_path / "home", tmp_path / "port"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "coordinator"), str(ROOT / "protocols"), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator",
            "serve",
            "--home",
            str(home),
            "--port-file",
            str(port_file),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    go_on = threading.Event()
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "coordinator did not write its port file"
            time.sleep(0.05)
        store = SqlStore(default_db_url(home))
        try:
            token, _ = issue_enrollment(store, alice.name)
        finally:
            store.close()
        certificate = tls.load_certificate((home / "coordinator-tls.crt").read_bytes(), "cert")
        address = f"127.0.0.1:{int(port_file.read_text())}"
        sealed = seal_dataset(alice, "alice-2024", plaintext=b"x" * 200_000)
        sent = threading.Event()
        with tls.pinned_channel(address, certificate) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(
                grpc.intercept_channel(channel, RequestSigner(alice.key))
            )
            stub.RegisterParty(
                coordinator_pb2.RegisterPartyRequest(
                    registration=alice.registration(), enrollment_token=token
                )
            )
            call = stub.UploadDataset.future(cut_off_upload(sealed, sent, go_on))
            assert sent.wait(10)
            deadline = time.monotonic() + 10
            while not incoming(home / "blobs"):
                assert time.monotonic() < deadline, "the upload never reached the blob store"
                time.sleep(0.05)
            # BlobWriter creates the file, then locks it: give it that instant.
            time.sleep(0.2)
            (live,) = incoming(home / "blobs")
            # The coordinator process is writing it: a store starting now keeps it.
            BlobStore(home / "blobs")
            assert incoming(home / "blobs") == [live]
            proc.send_signal(signal.SIGKILL)
            proc.wait(15)
            go_on.set()
            with pytest.raises(grpc.RpcError):
                call.result(timeout=10)
        assert incoming(home / "blobs") == [live]  # the crash left it behind
    finally:
        go_on.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    coord = Harness(home)  # the next start, on the same home
    try:
        assert incoming(home / "blobs") == []
        assert blob_files(home / "blobs") == []
        listed = coord.stub.ListDatasets(coordinator_pb2.ListDatasetsRequest()).datasets
        assert list(listed) == []
        # The party uploads again, and this time it is stored.
        assert coord.upload(sealed).dataset_id == "alice-2024"
    finally:
        coord.stop()
