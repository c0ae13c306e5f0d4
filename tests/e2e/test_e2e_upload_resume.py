"""A party's upload interrupted and resumed, through real processes (issue 11).

The party's `detente party upload` runs as its own process and reaches the
coordinator through a loopback relay (detente.faults.Relay) that slows it
down, so it can be killed mid-way, or that cuts the network. The coordinator
never lists the partial data set; `upload --resume` sends the rest of the
same sealed copy, and the data set the coordinator then holds has exactly the
ciphertext of that copy — the digest an uninterrupted upload of it gives.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from detente.faults import Relay
from experiments.bench_upload_parquet import generate
from party_client import Party, PartyHome
from party_client.remote import CoordinatorError
from protocols.documents import DatasetManifest
from protocols.errors import NotFound
from protocols.statements import Envelope
from tests.e2e.conftest import Running, detente

pytestmark = pytest.mark.e2e

TABLE_MIB = 24  # about 25 MB of ciphertext: a few seconds through the slowed relay
SLOW = 4e6  # bytes per second while the upload is to be interrupted


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("resume") / "loans.parquet"
    generate(path, TABLE_MIB, features=15, seed=11)
    return path


@pytest.fixture
def relay(running: Running) -> Iterator[Relay]:
    with Relay(running.address, rate=SLOW) as r:
        yield r


def party_behind(running: Running, name: str, relay: Relay) -> Path:
    """A party, initialised and attested, whose config reaches the coordinator via ``relay``."""
    home = running.party(name)
    detente(["party", "attest"], home)
    PartyHome(home).save_config(name, relay.address)
    return home


def start_upload(home: Path, table: Path, dataset_id: str) -> subprocess.Popen[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "DETENTE_HOME": str(home)}
    args = ["party", "upload", str(table), "--label", "label", "--id", "id"]
    return subprocess.Popen(
        [sys.executable, "-m", "detente", *args, "--dataset-id", dataset_id],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def partial_files(running: Running) -> list[Path]:
    return sorted((running.coordinator_home / "blobs").glob(".partial-*"))


def wait_for_partial(running: Running, process: subprocess.Popen[str], at_least: int) -> int:
    """Wait until the coordinator has written ``at_least`` bytes of the upload ``process``
    makes (in a partial file that did not exist when it started); their count."""
    earlier = set(partial_files(running))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        sizes = [p.stat().st_size for p in partial_files(running) if p not in earlier
                 and p.exists()]  # fmt: skip
        if sizes and max(sizes) >= at_least:
            return max(sizes)
        time.sleep(0.05)
    raise AssertionError("the coordinator received no upload within 120 s")


def pending_spool(home: Path, dataset_id: str) -> Path:
    return home / "spool" / f"pending-{dataset_id}.sealed"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def resumed_at(running: Running, dataset_id: str) -> int:
    """The offset the coordinator's log says the upload of ``dataset_id`` resumed at."""
    log = (running.coordinator_home / "coordinator.log").read_text()
    found = re.findall(rf"upload \w+ of {re.escape(dataset_id)} resumed at (\d+) bytes", log)
    assert found, f"the coordinator logged no resumed upload of {dataset_id}"
    return int(found[-1])


def test_an_upload_killed_mid_way_resumes_to_the_digest_of_its_sealed_copy(
    running: Running, relay: Relay, table: Path, tmp_path: Path
) -> None:
    home = party_behind(running, "killed", relay)
    upload = start_upload(home, table, "killed-ds")
    received = wait_for_partial(running, upload, 4 << 20)
    os.kill(upload.pid, signal.SIGKILL)  # the party's process, by its id
    upload.communicate(timeout=30)
    spool = pending_spool(home, "killed-ds")
    assert spool.exists() and (spool.stat().st_mode & 0o777) == 0o600
    spool_sha256 = sha256_file(spool)

    with Party.from_home(home) as party:
        # Not complete: not listed, not found, and no job can name it.
        assert [d.dataset_id for d in party.datasets()] == []
        with pytest.raises(CoordinatorError) as missing:
            party.dataset("killed-ds")
        assert missing.value.kind is NotFound
        with pytest.raises(CoordinatorError) as unproposed:
            party.propose(["killed-ds"], label="label", num_boost_round=2)
        assert unproposed.value.kind is NotFound

    relay.rate = None
    done = detente(["party", "upload", str(table), "--resume", "--json"], home)
    assert json.loads(done.stdout)["dataset_id"] == "killed-ds"
    # The kill cut the stream: the coordinator kept (and acknowledged) what had arrived,
    # and the resumed upload sent only the rest.
    assert resumed_at(running, "killed-ds") >= received > 0
    assert not spool.exists() and partial_files(running) == []

    with Party.from_home(home) as party:
        record = party.remote.dataset("killed-ds")
        manifest = DatasetManifest.verify(Envelope.from_bytes(record.manifest, "manifest"))
        stored = running.coordinator_home / "blobs" / spool_sha256[:2] / spool_sha256[2:]
        # The coordinator holds exactly the sealed copy, as the signed manifest names it.
        assert manifest.ciphertext_sha256 == spool_sha256 == sha256_file(stored)
        assert record.size == manifest.ciphertext_size == stored.stat().st_size
        # A fresh, uninterrupted upload of the same sealed bytes gives the same digest.
        fresh = dataclasses.replace(manifest, dataset_id="fresh-ds").sign(party.home.signing_key())
        begun = party.remote.begin_upload(fresh.to_bytes())
        data = stored.read_bytes()
        pieces = (data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20))
        again = party.remote.send_upload(begun.upload_id, 0, pieces, timeout=120)
        assert begun.received == 0 and again.dataset is not None
        assert again.dataset.size == record.size
        fresh_record = party.remote.dataset("fresh-ds")
        assert (
            DatasetManifest.verify(
                Envelope.from_bytes(fresh_record.manifest, "manifest")
            ).ciphertext_sha256
            == spool_sha256
        )
        assert sha256_file(stored) == spool_sha256
        # And the enclave opens it: a job over the resumed data set trains.
        job = party.propose(["killed-ds"], label="label", id_column="id", num_boost_round=2)
        party.approve(job, yes=True)
        assert job.wait(timeout=300).state == "succeeded"


def test_a_cut_network_is_resumed_and_named_in_the_error(
    running: Running, relay: Relay, table: Path
) -> None:
    home = party_behind(running, "cut", relay)
    upload = start_upload(home, table, "cut-ds")
    wait_for_partial(running, upload, 2 << 20)
    relay.cut()
    _, errors = upload.communicate(timeout=120)
    assert upload.returncode != 0
    assert "--resume" in errors and "cut-ds" in errors, errors
    relay.rate = None
    resumed = detente(["party", "upload", str(table), "--resume"], home)
    # Piped, the progress lines say where the upload resumed and how fast it went.
    last = [line for line in resumed.stderr.splitlines() if line.startswith("sent ")][-1]
    assert "resumed at" in last and "(100%)" in last and "MB/s" in last, resumed.stderr
    assert "uploaded cut-ds" in resumed.stdout
    with Party.from_home(home) as party:
        assert [d.dataset_id for d in party.datasets()] == ["cut-ds"]
    assert not pending_spool(home, "cut-ds").exists()


def test_a_tampered_sealed_copy_fails_at_the_end_and_leaves_nothing(
    running: Running, relay: Relay, table: Path
) -> None:
    home = party_behind(running, "tamper", relay)
    upload = start_upload(home, table, "tamper-ds")
    wait_for_partial(running, upload, 2 << 20)
    os.kill(upload.pid, signal.SIGKILL)
    upload.communicate(timeout=30)
    spool = pending_spool(home, "tamper-ds")
    # Flip a byte near the end: in the part the resumed upload sends.
    with spool.open("r+b") as f:
        f.seek(-100, os.SEEK_END)
        byte = f.read(1)
        f.seek(-100, os.SEEK_END)
        f.write(bytes([byte[0] ^ 1]))
    relay.rate = None
    refused = detente(["party", "upload", str(table), "--resume"], home, check=False)
    assert refused.returncode != 0
    assert "does not match the signed manifest" in refused.stderr, refused.stderr
    assert "nothing was stored" in refused.stderr
    with Party.from_home(home) as party:
        assert party.datasets() == []
    assert partial_files(running) == [] and not spool.exists()
    # Nothing left to resume: the party is told to upload again.
    again = detente(["party", "upload", str(table), "--resume"], home, check=False)
    assert again.returncode != 0 and "without --resume" in again.stderr


def test_a_changed_table_or_a_truncated_copy_is_not_resumed(
    running: Running, relay: Relay, table: Path, tmp_path: Path
) -> None:
    home = party_behind(running, "changed", relay)
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(table.read_bytes())
    upload = start_upload(home, copy, "changed-ds")
    wait_for_partial(running, upload, 2 << 20)
    os.kill(upload.pid, signal.SIGKILL)
    upload.communicate(timeout=30)
    relay.rate = None
    spool = pending_spool(home, "changed-ds")
    with spool.open("r+b") as f:
        f.truncate(spool.stat().st_size - 1)
    short = detente(["party", "upload", str(copy), "--resume"], home, check=False)
    assert short.returncode != 0 and "no longer" in short.stderr, short.stderr
    os.utime(copy, ns=(time.time_ns(), time.time_ns()))
    changed = detente(["party", "upload", str(copy), "--resume"], home, check=False)
    assert changed.returncode != 0 and "changed since it was sealed" in changed.stderr
    # Uploading the file afresh works, and says that the interrupted upload is still kept.
    fresh = detente(["party", "upload", str(copy), "--label", "label", "--id", "id"], home)
    assert "interrupted upload of" in fresh.stderr and "changed-ds" in fresh.stderr


def test_an_operator_who_damages_the_partial_upload_gets_the_whole_copy_again(
    running: Running, relay: Relay, table: Path
) -> None:
    """The coordinator's operator flips a byte of the bytes it acknowledged, then claims more
    bytes than its file holds: neither becomes a data set; the party's copy, intact, is sent
    again and the data set ends with exactly its digest."""
    import sqlite3

    home = party_behind(running, "victim", relay)
    earlier = set(partial_files(running))
    upload = start_upload(home, table, "victim-ds")
    wait_for_partial(running, upload, 3 << 20)
    os.kill(upload.pid, signal.SIGKILL)
    upload.communicate(timeout=30)
    spool_sha256 = sha256_file(pending_spool(home, "victim-ds"))
    (partial,) = set(partial_files(running)) - earlier
    with partial.open("r+b") as f:
        f.seek(1 << 20)
        byte = f.read(1)
        f.seek(1 << 20)
        f.write(bytes([byte[0] ^ 0x80]))
    relay.rate = None
    damaged = detente(["party", "upload", str(table), "--resume"], home, check=False)
    assert damaged.returncode != 0
    assert "coordinator's copy was damaged" in damaged.stderr, damaged.stderr
    assert pending_spool(home, "victim-ds").exists() and not partial.exists()
    with Party.from_home(home) as party:
        assert party.datasets() == []

    # Now the operator claims bytes its file does not hold.
    relay.rate = SLOW
    upload = start_upload_resume(home, table)
    wait_for_partial(running, upload, 2 << 20)
    os.kill(upload.pid, signal.SIGKILL)
    upload.communicate(timeout=30)
    settled_received(running, "victim-ds")  # the coordinator kept what arrived
    with sqlite3.connect(running.db) as db:
        db.execute(
            "UPDATE partial_uploads SET received = received + 5000000 WHERE dataset_id = ?",
            ("victim-ds",),
        )
    relay.rate = None
    # Refused at first ("holds only N bytes"), begun again from what the file holds.
    detente(["party", "upload", str(table), "--resume"], home)
    log = (running.coordinator_home / "coordinator.log").read_text()
    assert "SendUpload refused: FAILED_PRECONDITION (WrongState)" in log
    with Party.from_home(home) as party:
        record = party.remote.dataset("victim-ds")
    manifest = DatasetManifest.verify(Envelope.from_bytes(record.manifest, "manifest"))
    assert manifest.ciphertext_sha256 == spool_sha256
    stored = running.coordinator_home / "blobs" / spool_sha256[:2] / spool_sha256[2:]
    assert sha256_file(stored) == spool_sha256


def start_upload_resume(home: Path, table: Path) -> subprocess.Popen[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "DETENTE_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "detente", "party", "upload", str(table), "--resume"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def settled_received(running: Running, dataset_id: str) -> int:
    """Wait until the coordinator has acknowledged every byte its partial file holds (it
    does when the cut stream ends); that count."""
    import sqlite3

    deadline = time.monotonic() + 30
    while True:
        with sqlite3.connect(running.db) as db:
            received, name = db.execute(
                "SELECT received, temp_name FROM partial_uploads WHERE dataset_id = ?",
                (dataset_id,),
            ).fetchone()
        path = running.coordinator_home / "blobs" / name
        if path.exists() and path.stat().st_size == received:
            return int(received)
        assert time.monotonic() < deadline, "the coordinator never settled the cut upload"
        time.sleep(0.05)
