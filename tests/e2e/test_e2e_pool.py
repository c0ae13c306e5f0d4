"""The worker pool through real processes: a coordinator and two SIMULATION enclave
workers of one measurement sharing one identity (the second joined the first).

- two jobs run at the same time, one on each worker;
- a worker killed with SIGKILL (by its process id) mid-job: the job is re-queued
  without any party acting, finishes on the other worker with one result, and the
  parties decrypt a model equal to plaintext XGBoost's on the same rows;
- the only worker killed mid-job and started again on its address: the job resumes
  from its checkpoint there ("resumed after round …") and finishes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import xgboost as xgb

from detente.cluster import Process, cluster, start_pool_roles
from party_client.home import PartyHome
from tests.e2e.conftest import (
    LABEL,
    Running,
    contribute,
    credit_rows,
    detente,
    propose,
    wait_state,
)

ROWS = 600


@dataclass
class Pool:
    running: Running
    workers: dict[str, Process]  # by address
    restart: Any  # restart(address): start the worker of that address again

    def worker_of(self, home: Path, job_id: str) -> str:
        """The worker running (or that last ran) the job, from its events."""
        status = json.loads(detente(["party", "status", job_id, "--json"], home).stdout)
        runs = [e["text"] for e in status["events"] if e["kind"] == "worker"]
        assert runs, status
        return str(runs[-1].rsplit(" ", 1)[-1])

    def coordinator(self, *args: str) -> Any:
        home = str(self.running.coordinator_home)
        return detente(["coordinator", *args, "--home", home])

    def audit(self, event: str) -> list[dict[str, Any]]:
        with sqlite3.connect(self.running.db) as db:
            rows = db.execute(
                "SELECT subject, detail FROM audit_log WHERE event=? ORDER BY seq", (event,)
            ).fetchall()
        return [{"subject": s, **json.loads(d)} for s, d in rows]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    root = tmp_path_factory.mktemp("pool")
    with cluster(root) as c:
        roles, started = start_pool_roles(
            c, root, 2, coordinator_args=["--worker-check-seconds", "0.5"]
        )
        processes = {p.popen.pid: p for p in c.processes}
        workers = {w.address: processes[w.pid] for w in started}
        pool = Pool(Running(c, root, roles), workers, lambda address: None)

        def restart(address: str) -> None:
            """Start the worker of ``address`` again on its port, from its ENCLAVE_DIR: it
            unseals the pool's identity it holds (no --join needed)."""
            (worker,) = [w for w in started if w.address == address]
            others = [w.simulation_root for w in started if w is not worker]
            args = [arg for root_ in others for arg in ("--pool-simulation-root", root_)]
            port = address.rsplit(":", 1)[1]
            port_file = worker.instance.parent / f"{worker.name}-{time.monotonic_ns()}.port"
            run = ["libos", "run", str(worker.instance), "--", "--port", port]
            c.spawn(worker.name, [*run, "--port-file", str(port_file), *args], port_file, root)
            pool.workers[address] = c.processes[-1]

        pool.restart = restart
        yield pool


def kill_worker(process: Process) -> None:
    """SIGKILL the enclave process of a worker, by its process id: the child that
    `detente libos run` (the launcher, which then exits) started."""
    launcher = process.popen.pid
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    assert len(children) == 1, children
    os.kill(int(children[0]), signal.SIGKILL)
    process.popen.wait(timeout=30)


def wait_serving(pool: Pool, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        listed = json.loads(pool.coordinator("workers", "--json").stdout)["workers"]
        if sum(1 for w in listed if w["health"] == "serving") >= count:
            return listed
        assert time.monotonic() < deadline, listed
        time.sleep(0.3)


def wait_for_round(home: Path, job_id: str, timeout: float = 300) -> int:
    """Until the job reports a finished round (its checkpoint is then saved); the round."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = json.loads(detente(["party", "status", job_id, "--json"], home).stdout)
        rounds = [e["text"] for e in status["events"] if e["kind"] == "round"]
        if rounds:
            return int(rounds[-1].split()[1].split("/")[0])
        assert status["state"] in ("approved", "running"), status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} reported no round")


def plaintext_equal(home: Path, job_id: str, rows: pa.Table, out: Path) -> None:
    """The decrypted model predicts exactly as plaintext XGBoost trained on ``rows``."""
    import party_client
    from detente.demo import features

    written = json.loads(
        detente(["party", "results", job_id, "--out", str(out), "--json"], home).stdout
    )
    enclave = xgb.Booster()
    enclave.load_model(bytearray(Path(written["model"]).read_bytes()))
    terms = party_client.fetch_job(PartyHome(home), job_id).terms
    x, y, names = features(rows, LABEL, "ID")
    plain = xgb.train(
        terms.train_params(), xgb.DMatrix(x, label=y, feature_names=names), terms.num_rounds
    )
    data = xgb.DMatrix(x, feature_names=names)
    assert np.array_equal(enclave.predict(data), plain.predict(data))


def test_two_jobs_run_at_the_same_time_on_the_two_workers(pool: Pool, tmp_path: Path) -> None:
    wait_serving(pool, 2)
    rows = credit_rows(0, ROWS)
    alice, a_ds = contribute(pool.running, "two-alice", rows.slice(0, 300), tmp_path)
    bob, b_ds = contribute(pool.running, "two-bob", rows.slice(300, 300), tmp_path)
    jobs = [
        propose(alice, [a_ds, b_ds], "--rounds", "400", "--id", "ID", "--param", "max_depth=6")
        for _ in range(2)
    ]
    for job_id in jobs:
        for home in (alice, bob):
            detente(["party", "approve", job_id, "--yes"], home)
    done = [wait_state(alice, j, ("succeeded", "failed"), timeout=300) for j in jobs]
    assert [d["state"] for d in done] == ["succeeded", "succeeded"], done
    assert {pool.worker_of(alice, j) for j in jobs} == set(pool.workers)
    spans = []
    for d in done:
        states = [(e["at"], e["text"]) for e in d["events"] if e["kind"] == "state"]
        spans.append(
            (
                next(at for at, t in states if t == "running"),
                next(at for at, t in states if t == "succeeded"),
            )
        )
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans


def test_a_worker_killed_mid_job_is_replaced_and_the_job_finishes_once(
    pool: Pool, tmp_path: Path
) -> None:
    wait_serving(pool, 2)
    rows = credit_rows(1000, ROWS)
    alice, a_ds = contribute(pool.running, "kill-alice", rows.slice(0, 300), tmp_path)
    bob, b_ds = contribute(pool.running, "kill-bob", rows.slice(300, 300), tmp_path)
    job_id = propose(
        alice, [a_ds, b_ds], "--rounds", "3000", "--id", "ID", "--param", "max_depth=8"
    )
    for home in (alice, bob):
        detente(["party", "approve", job_id, "--yes"], home)
    wait_for_round(alice, job_id)
    victim = pool.worker_of(alice, job_id)
    kill_worker(pool.workers[victim])
    done = wait_state(alice, job_id, ("succeeded", "failed"), timeout=600)
    assert done["state"] == "succeeded", done
    (other,) = set(pool.workers) - {victim}
    assert pool.worker_of(alice, job_id) == other
    assert done["attempts"] == 2
    requeued = [e["text"] for e in done["events"] if e["kind"] == "requeued"]
    assert len(requeued) == 1 and requeued[0].startswith(f"re-queued: worker {victim} lost")
    (entry,) = [e for e in pool.audit("job.requeued") if e["subject"] == job_id]
    assert entry["worker"] == victim and entry["attempt"] == 1
    # One result: one success, one result statement, each output once.
    succeeded = [e for e in pool.audit("job.state") if e["subject"] == job_id]
    assert [e["to"] for e in succeeded].count("succeeded") == 1
    with sqlite3.connect(pool.running.db) as db:
        names = [n for (n,) in db.execute("SELECT name FROM outputs WHERE job_id=?", (job_id,))]
    assert names == ["model"]  # each output once (the terms release the model)
    for home in (alice, bob):
        plaintext_equal(home, job_id, rows, tmp_path / f"out-{home.name}")
    pool.restart(victim)  # for the next test


def test_the_only_worker_killed_mid_job_resumes_from_its_checkpoint_after_restart(
    pool: Pool, tmp_path: Path
) -> None:
    wait_serving(pool, 2)
    only, spare = sorted(pool.workers)
    pool.coordinator("workers", "remove", spare)
    rows = credit_rows(2000, ROWS)
    alice, a_ds = contribute(pool.running, "only-alice", rows.slice(0, 300), tmp_path)
    bob, b_ds = contribute(pool.running, "only-bob", rows.slice(300, 300), tmp_path)
    job_id = propose(
        alice, [a_ds, b_ds], "--rounds", "3000", "--id", "ID", "--param", "max_depth=8"
    )
    for home in (alice, bob):
        detente(["party", "approve", job_id, "--yes"], home)
    saved = wait_for_round(alice, job_id)
    assert pool.worker_of(alice, job_id) == only
    kill_worker(pool.workers[only])
    waiting = wait_state(alice, job_id, ("approved",), timeout=60)
    assert any(e["kind"] == "requeued" for e in waiting["events"])
    time.sleep(2)  # no worker serves: the job waits, it is not failed
    assert wait_state(alice, job_id, ("approved",), timeout=5)["state"] == "approved"
    pool.restart(only)
    done = wait_state(alice, job_id, ("succeeded", "failed"), timeout=600)
    assert done["state"] == "succeeded", done
    resumed = [e["text"] for e in done["events"] if e["kind"] == "checkpoint"]
    assert resumed and resumed[-1].startswith("resumed after round ")
    assert int(resumed[-1].split()[3].split("/")[0]) >= saved
    assert done["attempts"] == 2 and pool.worker_of(alice, job_id) == only
    plaintext_equal(alice, job_id, rows, tmp_path / "out")
    pool.coordinator("workers", "add", spare)
