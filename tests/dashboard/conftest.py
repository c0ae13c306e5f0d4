"""A live coordinator with its dashboard, a SIMULATION enclave and a running job.

Every role is a real process (detente.cluster): the coordinator runs with
``--dashboard 127.0.0.1:0`` and writes its address to ``dashboard.url`` in its
home, its operator token to ``dashboard-token``. Two parties upload slices of
the credit data; alice proposes a job heavy enough per round (20 parallel
trees of depth 8) to run for about 40 s unloaded, so progress is seen to
advance; bob approves it a little later, so "not yet approved" is seen too.
Its terms let the enclave report its metrics live (every METRICS_EVERY rounds,
on held-out rows), so the dashboard draws their curves as the job runs.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from detente.cluster import cluster, start_roles
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

ROUNDS = 600
QUERIED_ROWS = 20
SLOW_PARAMS = ("--param", "max_depth=8", "--param", "num_parallel_tree=20")
METRICS_EVERY = 10
LIVE_METRICS = ("--live-metrics", "--metrics-every", str(METRICS_EVERY), "--output", "model")
LIVE_METRICS += ("--output", "metrics", "--validation-fraction", "0.2")


@dataclass
class Board:
    running: Running
    url: str  # http://127.0.0.1:PORT/
    token: str
    homes: dict[str, Path]
    datasets: dict[str, str]
    job_id: str = ""  # approved by both owners once `approved` is used: it runs
    pending_id: str = ""  # approved by alice only: stays proposed
    sealed_id: str = ""  # a sealed model alice queried once (QUERIED_ROWS rows)

    @property
    def coordinator_pid(self) -> int:
        return next(p.popen.pid for p in self.running.c.processes if p.name == "coordinator")

    def api(self, path: str, token: str | None = None) -> Any:
        """GET /api/<path> with the operator token (or ``token``); the decoded JSON."""
        request = urllib.request.Request(
            self.url + path.lstrip("/"),
            headers={"Authorization": f"Bearer {token if token is not None else self.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def status(self, path: str, token: str | None = None) -> int:
        try:
            self.api(path, token)
        except urllib.error.HTTPError as exc:
            return exc.code
        return 200

    def wait_api_enclave(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """/api/enclaves once the coordinator has checked its enclave."""
        deadline = time.monotonic() + timeout
        while True:
            enclaves: list[dict[str, Any]] = self.api("api/enclaves")
            if all(e["health"] != "not checked yet" for e in enclaves):
                return enclaves
            assert time.monotonic() < deadline, f"the enclave was never checked: {enclaves}"
            time.sleep(0.5)

    def wait_job(self, predicate: Any, timeout: float = 120.0) -> dict[str, Any]:
        """Poll /api/jobs/<job> until ``predicate(job)``; bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.api(f"api/jobs/{self.job_id}")
            if predicate(job):
                return job
            assert time.monotonic() < deadline, f"job stayed {job['state']}: {job['events']}"
            time.sleep(0.5)


def _dashboard_url(home: Path) -> str:
    deadline = time.monotonic() + 30
    path = home / "dashboard.url"
    while not path.exists():
        assert time.monotonic() < deadline, "the coordinator wrote no dashboard.url"
        time.sleep(0.1)
    return path.read_text().strip()


def _sealed_and_queried(board: Board, root: Path) -> str:
    """A small sealed job run to the end, then one query of QUERIED_ROWS rows by alice."""
    alice, bob = board.homes["alice"], board.homes["bob"]
    job_id = propose(
        alice,
        [board.datasets["alice"], board.datasets["bob"]],
        *("--id", "ID", "--rounds", "5", "--sealed", "--output", "metrics"),
        *("--query", "alice=100", "--query", "bob=50/10"),
    )
    for home in (alice, bob):
        detente(["party", "approve", job_id, "--yes"], home)
    assert wait_state(alice, job_id, ("succeeded", "failed"), timeout=300)["state"] == "succeeded"
    rows = write_csv(credit_rows(600, QUERIED_ROWS).drop_columns([LABEL]), root / "query.csv")
    out = root / "answers.csv"
    detente(["party", "predict", job_id, str(rows), "--out", str(out), "--id", "ID"], alice)
    return job_id


@pytest.fixture(scope="package")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    """A coordinator serving its dashboard, with a job proposed (not yet approved by bob)."""
    root = tmp_path_factory.mktemp("dashboard")
    with cluster(root) as c:
        roles = start_roles(c, root, ["--dashboard", "127.0.0.1:0"])
        running = Running(c, root, roles)
        home = roles.coordinator_home
        url = _dashboard_url(home)
        token = (home / "dashboard-token").read_text().strip()
        homes, datasets = {}, {}
        for i, name in enumerate(("alice", "bob")):
            homes[name], datasets[name] = contribute(running, name, credit_rows(300 * i, 300), root)
        board = Board(running, url, token, homes, datasets)
        board.sealed_id = _sealed_and_queried(board, root)
        board.job_id = propose(
            homes["alice"],
            [datasets["alice"], datasets["bob"]],
            "--rounds",
            str(ROUNDS),
            *SLOW_PARAMS,
            *LIVE_METRICS,
        )
        detente(["party", "approve", board.job_id, "--yes"], homes["alice"])
        board.pending_id = propose(
            homes["alice"], [datasets["alice"], datasets["bob"]], "--rounds", "5"
        )
        detente(["party", "approve", board.pending_id, "--yes"], homes["alice"])
        yield board


@pytest.fixture(scope="package")
def approved(board: Board) -> Board:
    """The job approved by both owners (so it runs)."""
    detente(["party", "approve", board.job_id, "--yes"], board.homes["bob"])
    return board
