"""PartialWriter: a blob continued across streams, acknowledged only once synced."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from coordinator.blobs import BlobStore, PartialWriter, ShortPartial, UploadBusy
from protocols.errors import IntegrityError

NAME = ".partial-" + "ab" * 16


def test_acknowledgements_are_synced_counts_and_a_resume_completes_the_blob(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = os.urandom(10_000)
    sha = hashlib.sha256(data).hexdigest()
    acks: list[int] = []
    writer = PartialWriter(store, NAME, 0, sha, len(data), acks.append, "test", sync_every=1000)
    for i in range(0, 6_500, 500):
        writer.write(data[i : i + 500])
    assert writer.suspend() == 6_500
    assert acks == sorted(acks) and acks[-1] == 6_500 and len(acks) >= 2
    assert (store.root / NAME).stat().st_size == 6_500
    # A second stream cuts the file at its offset and continues it.
    writer = PartialWriter(store, NAME, 6_000, sha, len(data), acks.append, "test", 1000)
    writer.write(data[6_000:])
    assert writer.commit() == (sha, len(data))
    assert store.read(sha) == data and not (store.root / NAME).exists()


def test_one_stream_at_a_time_and_no_offset_past_the_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = os.urandom(4_000)
    sha = hashlib.sha256(data).hexdigest()
    first = PartialWriter(store, NAME, 0, sha, len(data), lambda n: None, "test")
    first.write(data[:1_000])
    with pytest.raises(UploadBusy):
        PartialWriter(store, NAME, 0, sha, len(data), lambda n: None, "test")
    assert not store.remove_partial(NAME)  # busy: kept
    first.suspend()
    with pytest.raises(ShortPartial) as short:
        PartialWriter(store, NAME, 2_000, sha, len(data), lambda n: None, "test")
    assert short.value.held == 1_000


def test_bytes_that_differ_are_refused_and_the_file_removed(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = os.urandom(3_000)
    writer = PartialWriter(
        store, NAME, 0, hashlib.sha256(data).hexdigest(), len(data), lambda n: None, "test"
    )
    writer.write(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(IntegrityError, match="does not match"):
        writer.commit()
    assert store.partial_names() == [] and list(store.root.rglob("*")) == []
