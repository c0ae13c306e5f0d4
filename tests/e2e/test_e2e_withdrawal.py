"""A data owner withdraws a data set, through real processes: coordinator, worker, party CLI.

`detente party withdraw` deletes the ciphertext at the coordinator, cancels the
jobs waiting on it, stops the one running on it, records it in the audit log,
refuses new proposals, and has the enclave worker destroy the job's checkpoint
and refuse the data set for good — also against an operator who puts the blob
file back and edits the database to un-withdraw it and re-approve the job. A
worker that is down when the owner withdraws gets the withdrawal once it is
back.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from detente.cluster import Process, start_coordinator
from libos import image, launcher
from libos.config import Mount
from libos.runtime import SimRuntime
from libos.sim import SimPlatform
from tests.e2e.conftest import Running, contribute, credit_rows, detente, propose, wait_state
from tests.e2e.test_attack_errors import wait_for_round


def instance(running: Running) -> Path:
    return running.root / "enclave-host" / "instance"


def mount_files(running: Running) -> list[str]:
    """The files of the worker's encrypted mount, opened as the SIMULATED host can (its
    platform secret is a host file; on hardware nothing outside the enclave could)."""
    where = instance(running)
    runtime = SimRuntime(
        image.measure(where),
        where,
        SimPlatform(launcher.platform_dir(where)),
        (Mount("/data", "data", "mrenclave"),),
    )
    return runtime.mount("/data").files()


def db(running: Running, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """What the coordinator's operator can do to its own SQLite database."""
    with sqlite3.connect(running.db) as connection:
        rows = connection.execute(sql, args).fetchall()
    return rows


def process(running: Running, name: str) -> Process:
    return next(p for p in running.c.processes if p.name == name and p.popen.poll() is None)


def restart_coordinator(running: Running) -> None:
    """Stop the coordinator by its pid and start it again on the same port."""
    process(running, "coordinator").stop()
    port = running.address.rsplit(":", 1)[1]
    (running.coordinator_home / "port").unlink(missing_ok=True)
    start_coordinator(
        running.c,
        running.coordinator_home,
        running.enclave,
        running.roles.policy,
        ["--port", port],
    )


def withdraw(home: Path, dataset_id: str) -> dict[str, Any]:
    return json.loads(detente(["party", "withdraw", dataset_id, "--yes", "--json"], home).stdout)


def test_withdrawal_stops_every_use_and_the_enclave_refuses_even_a_restored_copy(
    running: Running, tmp_path: Path
) -> None:
    rows = credit_rows(9000, 600)
    alice, a_ds = contribute(running, "wd-alice", rows.slice(0, 300), tmp_path)
    bob, b_ds = contribute(running, "wd-bob", rows.slice(300, 300), tmp_path)
    waiting = propose(alice, [a_ds, b_ds], "--id", "ID")
    detente(["party", "approve", waiting, "--yes"], alice)  # bob never approves
    job = propose(alice, [a_ds, b_ds], "--rounds", "5000", "--id", "ID", "--param", "max_depth=8")
    for home in (alice, bob):
        detente(["party", "approve", job, "--yes"], home)
    wait_for_round(alice, job)
    checkpoints = [p for p in mount_files(running) if p.startswith(f"checkpoints/{job}/")]
    assert checkpoints, "the running job saved a checkpoint"
    [(sha,)] = db(running, "SELECT blob_sha256 FROM datasets WHERE dataset_id = ?", a_ds)
    blob = running.coordinator_home / "blobs" / sha[:2] / sha[2:]
    assert blob.exists()
    kept = tmp_path / "kept-by-the-operator"
    shutil.copy(blob, kept)

    # Asked first, with what it will cancel; "no" withdraws nothing.
    asked = detente(["party", "withdraw", a_ds], alice, check=False, input="n\n")
    assert asked.returncode == 1
    assert waiting in asked.stderr and job in asked.stderr
    assert blob.exists()
    # Only the owner withdraws.
    done = detente(["party", "withdraw", a_ds, "--yes"], bob, check=False)
    assert done.returncode == 1 and "only its owner withdraws it" in done.stderr

    withdrawn = withdraw(alice, a_ds)
    assert sorted(withdrawn["cancelled_jobs"]) == sorted([waiting, job])
    [worker] = withdrawn["workers"]
    assert worker["worker"] == running.enclave and worker["acknowledged"] is True

    assert not blob.exists(), "the ciphertext is deleted"
    stopped = wait_state(alice, job, ("cancelled", "failed", "succeeded"), timeout=60)
    assert stopped["state"] == "cancelled", stopped
    reason = f"data set '{a_ds}' was withdrawn by its owner"
    assert any(reason in e["text"] for e in stopped["events"])
    assert wait_state(alice, waiting, ("cancelled",), timeout=10)["state"] == "cancelled"
    listed = json.loads(detente(["party", "datasets", "--json"], alice).stdout)
    assert [d["withdrawn_at"] > 0 for d in listed if d["dataset_id"] == a_ds] == [True]
    assert [d["withdrawn_at"] for d in listed if d["dataset_id"] == b_ds] == [0]
    assert db(running, "SELECT subject FROM audit_log WHERE event = 'dataset.withdrawn'") == [
        (a_ds,)
    ]
    assert (a_ds,) in db(
        running, "SELECT subject FROM audit_log WHERE event = 'dataset.withdrawal_delivered'"
    )
    detente(["party", "audit"], alice)  # the log still verifies
    refused = propose(bob, [a_ds, b_ds], "--id", "ID", check=False)
    assert refused.returncode == 1 and "was withdrawn by its owner" in refused.stderr
    files = mount_files(running)
    assert not any(p.startswith(f"checkpoints/{job}/") for p in files), "checkpoint shredded"

    # The operator puts the blob back and edits its database: the data set un-withdrawn,
    # the job approved again; then restarts the coordinator, which schedules it.
    shutil.copy(kept, blob)
    db(
        running,
        "UPDATE datasets SET withdrawn_at = NULL, withdrawal = NULL WHERE dataset_id = ?",
        a_ds,
    )
    db(running, "UPDATE jobs SET state = 'approved', cancel_reason = '' WHERE job_id = ?", job)
    restart_coordinator(running)
    failed = wait_state(alice, job, ("failed", "succeeded"), timeout=120)
    assert failed["state"] == "failed", failed
    assert f"data set '{a_ds}' was withdrawn by its owner" in failed["error"]
    assert not any(p.startswith(f"checkpoints/{job}/") for p in mount_files(running))


def test_a_worker_down_at_the_withdrawal_gets_it_when_it_is_back(
    running: Running, tmp_path: Path
) -> None:
    carol, c_ds = contribute(running, "wd-carol", credit_rows(9600, 200), tmp_path)
    enclave = process(running, "enclave")
    enclave.stop()  # by its pid
    withdrawn = withdraw(carol, c_ds)
    [worker] = withdrawn["workers"]
    assert worker["acknowledged"] is False and worker["error"]
    assert withdrawn["withdrawn_at"] > 0  # the coordinator's part is done regardless

    port = running.enclave.rsplit(":", 1)[1]
    host = running.root / "enclave-host"
    port_file = host / "enclave-again.port"
    running.c.spawn(
        "enclave",
        [
            "libos",
            "run",
            str(instance(running)),
            "--",
            "--port",
            port,
            "--port-file",
            str(port_file),
        ],
        port_file,
        host / "logs",
    )
    deadline = time.monotonic() + 60
    while True:
        again = withdraw(carol, c_ds)  # a repeat: shows the acknowledgements so far
        if again["workers"][0]["acknowledged"]:
            break
        assert time.monotonic() < deadline, again
        time.sleep(1)
    [(digest,)] = db(running, "SELECT manifest_digest FROM datasets WHERE dataset_id = ?", c_ds)
    assert f"withdrawals/datasets/{digest}" in mount_files(running)
