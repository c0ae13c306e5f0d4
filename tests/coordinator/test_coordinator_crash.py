"""`kill -9` of the coordinator mid-upload and mid-job, on SQLite and a real PostgreSQL (issue 12).

Every role is a real process (detente.cluster): an enclave worker, a
coordinator on a fixed loopback port (so the parties' configuration still
names it after a restart), and the parties' `detente` commands. A large
upload goes through a slowed relay (detente.faults.Relay) so the coordinator
can be killed, by its process id, once it has acknowledged part of it. After
the restart no accepted data set is lost (its blob still hashes to its signed
manifest), the partial one is not listed, and `upload --resume` completes it
from the acknowledged offset. A job running when the coordinator is killed
finishes after the restart, with one result.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from coordinator_testkit import BOTH_DATABASES

from coordinator.store import SqlStore
from detente.cluster import Cluster, Roles, cluster, start_coordinator, start_roles
from detente.faults import Relay
from experiments.bench_upload_parquet import generate
from party_client import Party, PartyHome
from protocols.documents import DatasetManifest
from protocols.statements import Envelope

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)]

BIG_MIB = 56  # over one acknowledgement (32 MiB) of ciphertext
RATE = 20e6  # bytes per second through the relay while the coordinator is to be killed


LABEL = "default.payment.next.month"


def detente(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """The real CLI in a fresh process as the party in ``home``; it must succeed."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "DETENTE_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-m", "detente", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def credit_csv(path: Path, rows: int) -> Path:
    """The first ``rows`` rows of the credit data the demo uses."""
    import pyarrow.csv as pacsv

    from detente.demo import default_data

    with default_data() as source:
        pacsv.write_csv(pacsv.read_csv(source).slice(0, rows), path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kill_coordinator(c: Cluster) -> None:
    """SIGKILL the running coordinator by its process id (no cleanup of any kind)."""
    (process,) = [p for p in c.processes if p.name.startswith("coordinator") and
                  p.popen.poll() is None]  # fmt: skip
    os.kill(process.popen.pid, signal.SIGKILL)
    process.popen.wait(timeout=30)


def restart_coordinator(c: Cluster, roles: Roles, args: list[str], n: int) -> None:
    (roles.coordinator_home / "port").unlink(missing_ok=True)
    start_coordinator(
        c, roles.coordinator_home, roles.enclave, roles.policy, args, name=f"coordinator-{n}"
    )


def party(c: Cluster, roles: Roles, root: Path, name: str, db_url: str | None) -> Path:
    """A party enrolled by the operator (on the coordinator's database), initialised and
    attested through the real CLI."""
    enroll = ["coordinator", "enroll", "--home", str(roles.coordinator_home), "--name", name]
    enroll += [*(["--db-url", db_url] if db_url else []), "--json"]
    token = json.loads(c.run(enroll))["token"]
    home = root / f"party-{name}"
    home.mkdir()
    detente(["party", "init", "--name", name, "--coordinator", roles.coordinator,
             "--policy", str(roles.policy), "--coordinator-cert", str(roles.coordinator_cert),
             "--enrollment-token", token], home)  # fmt: skip
    detente(["party", "attest"], home)
    return home


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def blob(roles: Roles, sha256: str) -> Path:
    return roles.coordinator_home / "blobs" / sha256[:2] / sha256[2:]


def acknowledged(store: SqlStore) -> int:
    partials = store.list_partials()
    return partials[0].received if partials else 0


def test_kill_9_mid_upload_and_mid_job_loses_nothing(db_url: str | None, tmp_path: Path) -> None:
    port = free_port()
    args = ["--port", str(port), *(["--db-url", db_url] if db_url else [])]
    table = tmp_path / "big.parquet"
    generate(table, BIG_MIB, features=15, seed=5)
    with cluster(tmp_path) as c:
        roles = start_roles(c, tmp_path, args)
        store = SqlStore(db_url or f"sqlite:///{roles.coordinator_home / 'coordinator.db'}")
        try:
            # An accepted data set, before anything goes wrong.
            early = party(c, roles, tmp_path, "early", db_url)
            csv = credit_csv(tmp_path / "early.csv", 3000)
            detente(["party", "upload", str(csv), "--label", LABEL, "--id", "ID",
                     "--dataset-id", "early-ds"], early)  # fmt: skip
            with Party.from_home(early) as p:
                accepted = p.remote.dataset("early-ds")
            digest = DatasetManifest.verify(
                Envelope.from_bytes(accepted.manifest, "manifest")
            ).ciphertext_sha256

            # -- mid-upload ----------------------------------------------------
            big = party(c, roles, tmp_path, "big", db_url)
            with Relay(roles.coordinator, rate=RATE) as relay:
                PartyHome(big).save_config("big", relay.address)
                env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "DETENTE_HOME": str(big)}
                upload = subprocess.Popen(
                    [sys.executable, "-m", "detente", "party", "upload", str(table),
                     "--label", "label", "--id", "id", "--dataset-id", "big-ds"],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )  # fmt: skip
                deadline = time.monotonic() + 180
                while acknowledged(store) == 0:
                    assert upload.poll() is None, upload.communicate()
                    assert time.monotonic() < deadline, "nothing acknowledged within 180 s"
                    time.sleep(0.05)
                kill_coordinator(c)
                held = acknowledged(store)
                _, errors = upload.communicate(timeout=120)
                assert upload.returncode != 0 and "--resume" in errors, errors
                restart_coordinator(c, roles, args, 2)

                with Party.from_home(early) as p:
                    # The accepted data set is intact: listed, and its blob is its manifest's.
                    assert [d.dataset_id for d in p.datasets()] == ["early-ds"]
                    assert p.remote.dataset("early-ds").manifest == accepted.manifest
                    assert sha256_file(blob(roles, digest)) == digest
                with Party.from_home(big) as p:
                    assert p.datasets() == []  # the partial one is not listed
                assert acknowledged(store) == held > 0
                spool = big / "spool" / "pending-big-ds.sealed"
                spool_sha256 = sha256_file(spool)
                relay.rate = None
                detente(["party", "upload", str(table), "--resume"], big)
            log = (roles.coordinator_home / "coordinator.log").read_text()
            assert re.findall(r"of big-ds resumed at (\d+) bytes", log)[-1] == str(held)
            with Party.from_home(big) as p:
                record = p.remote.dataset("big-ds")
            manifest = DatasetManifest.verify(Envelope.from_bytes(record.manifest, "manifest"))
            assert (
                manifest.ciphertext_sha256 == spool_sha256 == sha256_file(blob(roles, spool_sha256))
            )
            assert store.list_partials() == []

            # -- mid-job -------------------------------------------------------
            with Party.from_home(early) as p:
                job = p.propose(["early-ds"], id_column="ID", num_boost_round=400,
                                params={"max_depth": 8})  # fmt: skip
                p.approve(job, yes=True)
                deadline = time.monotonic() + 120
                while job.refresh().state != "running":
                    assert job.state in ("proposed", "approved"), job.view.error
                    assert time.monotonic() < deadline, "the job never started"
                    time.sleep(0.05)
            kill_coordinator(c)
            restart_coordinator(c, roles, args, 3)
            with Party.from_home(early) as p:
                done = p.job(job.job_id).wait(timeout=300)
                assert done.state == "succeeded"
                written = done.results(tmp_path / "results")
                assert "model" in written and written["model"].stat().st_size > 0
            names = [o.name for o in store.get_job(job.job_id).outputs]
            assert names and len(names) == len(set(names))  # each output once
            finished = [
                e
                for e in store.audit_entries()
                if e.subject == job.job_id and e.detail.get("to") == "succeeded"
            ]
            assert len(finished) == 1  # one result
            states = [e.text for e in done.view.events if e.kind == "state"]
            assert states.count("succeeded") == 1
            assert any("restarted while the job ran" in s for s in states), states
            assert (
                json.loads(detente(["party", "status", job.job_id, "--json"], early).stdout)[
                    "state"
                ]
                == "succeeded"
            )
        finally:
            store.close()
