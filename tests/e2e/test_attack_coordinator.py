"""The coordinator shares only what each party needs, bounds jobs, and lets a failed job
resume (attacks 6–8), through real coordinator, worker and CLI processes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import xgboost as xgb

from coordinator.server import certificate_path
from detente.cluster import Roles, start_coordinator
from detente.demo import features
from party_client.home import PartyHome
from party_client.remote import CoordinatorError
from protocols.documents import DatasetManifest
from protocols.errors import NotFound
from protocols.statements import Envelope
from tests.e2e.conftest import (
    LABEL,
    Running,
    contribute,
    credit_rows,
    detente,
    propose,
    wait_state,
    write_csv,
)
from tests.e2e.test_attack_errors import _job_pid, wait_for_round

pytestmark = pytest.mark.e2e


def test_registration_needs_a_token_and_a_party_sees_only_its_own(
    running: Running, tmp_path: Path
) -> None:
    """Attack 6: a stranger cannot register; a member sees only what it takes part in."""
    stranger = tmp_path / "stranger"
    done = detente(
        [
            *("party", "init", "--name", "stranger", "--coordinator", running.address),
            *("--coordinator-cert", str(running.coordinator_cert)),
            *("--policy", str(running.policy())),
        ],
        stranger,
        check=False,
    )
    assert done.returncode == 1
    assert "detente coordinator enroll --name stranger" in done.stderr
    token = running.roles.enroll(running.c, "stranger")
    wrong = detente(
        [
            *("party", "init", "--name", "stranger", "--coordinator", running.address),
            *("--enrollment-token", token + "x"),
        ],
        stranger,
        check=False,
    )
    assert wrong.returncode == 1 and "no valid enrollment token" in wrong.stderr

    rows = credit_rows(5000, 400)
    alice, a_ds = contribute(running, "see-alice", rows.slice(0, 200), tmp_path)
    bob, b_ds = contribute(running, "see-bob", rows.slice(200, 200), tmp_path)
    job_id = propose(alice, [a_ds, b_ds], "--rounds", "3", "--id", "ID")
    for home in (alice, bob):
        detente(["party", "approve", job_id, "--yes"], home)
    wait_state(alice, job_id, ("succeeded",))
    eve = running.party("see-eve")  # enrolled, but in no job

    # Eve sees neither the data sets nor the job; she can list members (to name recipients).
    assert json.loads(detente(["party", "datasets", "--json"], eve).stdout) == []
    assert json.loads(detente(["party", "jobs", "--json"], eve).stdout) == []
    done = detente(["party", "status", job_id], eve, check=False)
    assert done.returncode == 1 and f"no job {job_id!r} that you take part in" in done.stderr
    with running.remote(eve) as remote:
        with pytest.raises(CoordinatorError) as refused:
            remote.fetch_output(job_id, "model")
        assert "NOT_FOUND" in str(refused.value.code)
        assert refused.value.kind is NotFound
        names = {p.name for p in remote.parties()}
        # A data set's public manifest, by the id its owner gave out: no file name in it.
        manifest = DatasetManifest.verify(Envelope.from_bytes(remote.dataset(a_ds).manifest))
    assert {"see-alice", "see-bob", "see-eve"} <= names
    assert manifest.name == "" and "see-alice.csv" not in manifest.to_dict().values()
    # Bob sees his own data set and the job's, not Eve's or anyone else's.
    bobs = {
        d["dataset_id"] for d in json.loads(detente(["party", "datasets", "--json"], bob).stdout)
    }
    assert bobs == {a_ds, b_ds}
    assert [j["job_id"] for j in json.loads(detente(["party", "jobs", "--json"], bob).stdout)] == [
        job_id
    ]


@pytest.fixture(scope="module")
def limited(running: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Roles]:
    """A second coordinator on the same enclave, with small per-job limits."""
    home = tmp_path_factory.mktemp("limited-coordinator")
    port = start_coordinator(
        running.c,
        home,
        running.enclave,
        running.roles.policy,
        ["--max-job-seconds", "5", "--max-work", "50000000"],
        name="limited-coordinator",
    )
    yield Roles(
        f"127.0.0.1:{port}",
        running.enclave,
        running.measured,
        running.roles.policy,
        certificate_path(home),
        home,
    )


def limited_party(running: Running, roles: Roles, name: str, table: pa.Table, tmp: Path) -> Path:
    home = running.root / f"limited-{name}"
    home.mkdir()
    roles.init_party(running.c, name, home)
    detente(["party", "attest"], home)
    csv = write_csv(table, tmp / f"{name}.csv")
    detente(
        ["party", "upload", str(csv), "--label", LABEL, "--id", "ID", "--dataset-id", f"{name}-ds"],
        home,
    )
    return home


def test_one_party_cannot_hold_the_enclave_and_jobs_can_be_cancelled(
    running: Running, limited: Roles, tmp_path: Path
) -> None:
    """Attack 7: a 100,000-round job is refused or stopped; the others' jobs still run."""
    rows = credit_rows(6000, 900)
    hog = limited_party(running, limited, "hog", rows.slice(0, 600), tmp_path)
    fair = limited_party(running, limited, "fair", rows.slice(600, 300), tmp_path)

    # Above the operator's ceiling of rounds × rows: refused when proposed.
    done = propose(hog, ["hog-ds"], "--rounds", "100000", "--id", "ID", check=False)
    assert done.returncode == 1
    assert "100000 rounds × 600 rows = 60000000, above its limit of 50000000" in done.stderr
    # Asking for more time than the coordinator gives: refused too.
    done = propose(hog, ["hog-ds"], "--id", "ID", "--max-seconds", "60", check=False)
    assert done.returncode == 1 and "more than this coordinator's limit of 5 s" in done.stderr

    # Under the ceiling but far too long: stopped at the time limit, then the next job runs.
    hog_job = propose(hog, ["hog-ds"], "--rounds", "80000", "--id", "ID")
    detente(["party", "approve", hog_job, "--yes"], hog)
    fair_job = propose(fair, ["fair-ds"], "--rounds", "5", "--id", "ID")
    detente(["party", "approve", fair_job, "--yes"], fair)
    started = time.monotonic()
    failed = wait_state(hog, hog_job, ("failed", "succeeded"), timeout=60)
    assert failed["state"] == "failed", failed
    assert "ran longer than its time limit of 5 s" in failed["error"]
    assert f"detente party retry {hog_job}" in failed["error"]
    assert wait_state(fair, fair_job, ("succeeded", "failed"))["state"] == "succeeded"
    assert time.monotonic() - started < 45

    # The proposer cancels its running job; the enclave is free again at once.
    long_job = propose(hog, ["hog-ds"], "--rounds", "80000", "--id", "ID")
    detente(["party", "approve", long_job, "--yes"], hog)
    wait_state(hog, long_job, ("running",), timeout=60)
    detente(["party", "cancel", long_job, "--reason", "wrong parameters"], hog)
    cancelled = wait_state(hog, long_job, ("cancelled", "failed", "succeeded"), timeout=20)
    assert cancelled["state"] == "cancelled", cancelled
    assert any(
        "cancelled by the proposer: wrong parameters" in e["text"] for e in cancelled["events"]
    )
    # Only the proposer cancels.
    other = propose(hog, ["hog-ds"], "--rounds", "5", "--id", "ID")
    done = detente(["party", "cancel", other], fair, check=False)
    assert done.returncode == 1 and "no job" in done.stderr  # fair takes no part in it

    # The operator cancels a waiting job from the command line.
    done = detente(
        [
            "coordinator",
            "cancel",
            other,
            "--home",
            str(limited.coordinator_home),
            "--reason",
            "maintenance",
        ],
        hog,
    )
    assert f"{other} cancelled" in done.stdout
    assert wait_state(hog, other, ("cancelled",), timeout=5)["state"] == "cancelled"
    done = detente(["party", "approve", other, "--yes"], hog, check=False)
    assert done.returncode == 1 and "cancelled" in done.stderr


def test_a_failed_job_is_retried_with_the_same_terms_and_resumes_from_its_checkpoint(
    running: Running, tmp_path: Path
) -> None:
    """Attack 8: a crashed job is not stuck; its proposer retries it, no new approvals."""
    rows = credit_rows(7000, 600)
    alice, a_ds = contribute(running, "retry-alice", rows.slice(0, 300), tmp_path)
    bob, b_ds = contribute(running, "retry-bob", rows.slice(300, 300), tmp_path)
    job_id = propose(
        alice, [a_ds, b_ds], "--rounds", "3000", "--id", "ID", "--param", "max_depth=8"
    )
    for home in (alice, bob):
        detente(["party", "approve", job_id, "--yes"], home)
    pid = _job_pid(running, job_id)
    wait_for_round(alice, job_id)
    os.kill(pid, signal.SIGKILL)
    failed = wait_state(alice, job_id, ("failed", "succeeded"))
    assert failed["state"] == "failed", failed
    assert "the job process crashed" in failed["error"]

    # Approving again does not pretend: the job takes no approvals, and says what to do.
    done = detente(["party", "approve", job_id, "--yes"], bob, check=False)
    assert done.returncode == 1 and f"detente party retry {job_id}" in done.stderr
    assert f"detente party retry {job_id}" in detente(["party", "status", job_id], alice).stdout
    # Only the proposer retries.
    done = detente(["party", "retry", job_id], bob, check=False)
    assert done.returncode == 1 and "only the proposer" in done.stderr

    detente(["party", "retry", job_id], alice)
    done = wait_state(alice, job_id, ("succeeded", "failed"), timeout=180)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2
    resumed = [e["text"] for e in done["events"] if e["kind"] == "checkpoint"]
    assert resumed and resumed[0].startswith("resumed after round ")
    assert int(resumed[0].split()[3].split("/")[0]) >= 300

    # The resumed model is the model of an uninterrupted run (plaintext, same rows).
    out = tmp_path / "results"
    written = json.loads(
        detente(["party", "results", job_id, "--out", str(out), "--json"], alice).stdout
    )
    enclave = xgb.Booster()
    enclave.load_model(bytearray(Path(written["model"]).read_bytes()))
    import party_client

    terms = party_client.fetch_job(PartyHome(alice), job_id).terms
    x, y, names = features(rows, LABEL, "ID")
    params = terms.train_params()
    plain = xgb.train(params, xgb.DMatrix(x, label=y, feature_names=names), terms.num_rounds)
    dtest = xgb.DMatrix(x, feature_names=names)
    assert np.array_equal(enclave.predict(dtest), plain.predict(dtest))


def _blob_path(running: Running, sha256: str) -> Path:
    return running.coordinator_home / "blobs" / sha256[:2] / sha256[2:]


def _nothing_released(running: Running, home: Path, job_id: str, tmp: Path) -> None:
    with sqlite3.connect(running.db) as db:
        outputs = db.execute("SELECT name FROM outputs WHERE job_id=?", (job_id,)).fetchall()
        (statement,) = db.execute(
            "SELECT result_statement FROM jobs WHERE job_id=?", (job_id,)
        ).fetchone()
    assert outputs == [] and not statement
    done = detente(["party", "results", job_id, "--out", str(tmp / job_id)], home, check=False)
    assert done.returncode == 1 and f"job {job_id} is failed" in done.stderr
    assert not (tmp / job_id).exists()


def test_a_data_set_corrupted_on_the_coordinators_disk_fails_its_job_and_releases_nothing(
    running: Running, tmp_path: Path
) -> None:
    """The coordinator streams each blob once and checks its hash at the end; a blob
    swapped with a database edit to pass that check is refused by the enclave against
    the signed manifest. Either way the job fails at once naming the data set."""
    rows = credit_rows(8000, 400)
    alice, a_ds = contribute(running, "rot-alice", rows.slice(0, 200), tmp_path)
    bob, b_ds = contribute(running, "rot-bob", rows.slice(200, 200), tmp_path)
    (sha256,) = sql_one(running, "SELECT blob_sha256 FROM datasets WHERE dataset_id=?", a_ds)
    original = _blob_path(running, sha256).read_bytes()
    rotten = bytearray(original)
    rotten[len(rotten) // 2] ^= 0x01

    # Bit rot in place: the blob no longer hashes to its name.
    _blob_path(running, sha256).write_bytes(bytes(rotten))
    job_id = propose(alice, [a_ds, b_ds], "--rounds", "3", "--id", "ID")
    for home in (alice, bob):
        detente(["party", "approve", job_id, "--yes"], home)
    failed = wait_state(alice, job_id, ("failed", "succeeded"), timeout=60)
    assert failed["state"] == "failed", failed
    assert a_ds in failed["error"] and "corrupted" in failed["error"], failed["error"]
    _nothing_released(running, alice, job_id, tmp_path)

    # A malicious operator stores the altered bytes under their own hash and points the
    # data set at them: the coordinator's check passes, the enclave's does not.
    swapped = hashlib.sha256(rotten).hexdigest()
    _blob_path(running, swapped).parent.mkdir(exist_ok=True)
    _blob_path(running, swapped).write_bytes(bytes(rotten))
    with sqlite3.connect(running.db) as db:
        db.execute("UPDATE datasets SET blob_sha256=? WHERE dataset_id=?", (swapped, a_ds))
    job_id = propose(alice, [a_ds, b_ds], "--rounds", "3", "--id", "ID")
    for home in (alice, bob):
        detente(["party", "approve", job_id, "--yes"], home)
    failed = wait_state(alice, job_id, ("failed", "succeeded"), timeout=60)
    assert failed["state"] == "failed", failed
    assert a_ds in failed["error"], failed["error"]
    _nothing_released(running, alice, job_id, tmp_path)

    # Restored, the same data sets train.
    with sqlite3.connect(running.db) as db:
        db.execute("UPDATE datasets SET blob_sha256=? WHERE dataset_id=?", (sha256, a_ds))
    _blob_path(running, sha256).write_bytes(original)
    job_id = propose(alice, [a_ds, b_ds], "--rounds", "3", "--id", "ID")
    for home in (alice, bob):
        detente(["party", "approve", job_id, "--yes"], home)
    assert wait_state(alice, job_id, ("failed", "succeeded"))["state"] == "succeeded"


def sql_one(running: Running, statement: str, *args: object) -> tuple:
    with sqlite3.connect(running.db) as db:
        row = db.execute(statement, args).fetchone()
    assert row is not None, statement
    return tuple(row)
