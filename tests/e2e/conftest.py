"""Shared pieces for end-to-end tests: a small slice of the credit data, real processes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from coordinator.enclave_client import EnclaveClient
from detente.cluster import Cluster, Roles, cluster, start_roles
from detente.demo import default_data
from party_client.home import PartyHome
from party_client.remote import Coordinator
from protocols.policy import AttestationPolicy

LABEL = "default.payment.next.month"


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 rows of the real credit data set (the first rows, all columns)."""
    table = credit_rows(0, 600)
    path = tmp_path_factory.mktemp("data") / "credit-600.csv"
    pacsv.write_csv(table, path)
    return path


class Running:
    def __init__(self, c: Cluster, root: Path, roles: Roles) -> None:
        self.c, self.root, self.roles = c, root, roles
        self.address, self.enclave, self.measured = roles.coordinator, roles.enclave, roles.measured
        self.coordinator_cert = roles.coordinator_cert
        self.coordinator_home = roles.coordinator_home

    @property
    def db(self) -> Path:
        """The coordinator's SQLite file (what a malicious operator edits)."""
        return self.coordinator_home / "coordinator.db"

    def policy(self, mrenclave: str | None = None, simulation: bool = True) -> Path:
        """The roles' policy with another MRENCLAVE or simulation setting; it trusts the
        simulated machines of every worker the roles started (a pool has several)."""
        import tomllib

        roots = tomllib.loads(self.roles.policy.read_text())["simulation_roots"]
        listed = ", ".join(f'"{r}"' for r in roots)
        path = self.root / f"policy-{mrenclave or 'ok'}-{simulation}.toml"
        path.write_text(
            f'mrenclave = ["{mrenclave or self.measured["mrenclave"]}"]\n'
            f"allow_simulation = {'true' if simulation else 'false'}\n"
            f"simulation_roots = [{listed}]\n"
        )
        return path

    def party(self, name: str) -> Path:
        """A party enrolled by the operator and initialised through the real CLI."""
        home = self.root / f"party-{name}"
        home.mkdir()
        self.roles.init_party(self.c, name, home, self.policy())
        return home

    def remote(self, home: Path) -> Coordinator:
        """The coordinator as the party in ``home`` reaches it: pinned TLS, signed requests."""
        return Coordinator.for_home(PartyHome(home))

    def enclave_channel(self) -> grpc.Channel:
        """A channel to the enclave pinned to its RA-TLS certificate, verified first."""
        client = EnclaveClient(self.enclave, AttestationPolicy.load(self.policy()))
        return client.channel()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A coordinator and a SIMULATION enclave worker, each its own process."""
    root = tmp_path_factory.mktemp("cluster")
    with cluster(root) as c:
        yield Running(c, root, start_roles(c, root))


def write_csv(table: pa.Table, path: Path) -> Path:
    pacsv.write_csv(table, path)
    return path


# --------------------------------------------------------------------------- attack kit


def detente(args: list[str], home: Path | None = None, check: bool = True, **kw: Any) -> Any:
    """Run the real CLI in a fresh process as the party in ``home``."""
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    if home is not None:
        env["DETENTE_HOME"] = str(home)
    done = subprocess.run(
        [sys.executable, "-m", "detente", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def credit_rows(start: int, count: int) -> pa.Table:
    with default_data() as csv:
        return pacsv.read_csv(csv).slice(start, count)


def contribute(
    running: Running, name: str, table: pa.Table, tmp: Path, id_column: str | None = "ID"
) -> tuple[Path, str]:
    """A party enrolled, initialised, attested, with ``table`` uploaded as ``<name>-ds``."""
    home = running.party(name)
    detente(["party", "attest"], home)
    csv = write_csv(table, tmp / f"{name}.csv")
    args = ["party", "upload", str(csv), "--label", LABEL, "--dataset-id", f"{name}-ds"]
    detente([*args, *(["--id", id_column] if id_column else [])], home)
    return home, f"{name}-ds"


def propose(home: Path, datasets: list[str], *extra: str, check: bool = True) -> Any:
    """`detente party propose` over ``datasets``; returns the job id (or the process)."""
    args = ["party", "propose", "--label", LABEL, "--json", *extra]
    for dataset in datasets:
        args += ["--dataset", dataset]
    done = detente(args, home, check=check)
    if not check:
        return done
    return json.loads(done.stdout)["job_id"]


def wait_state(home: Path, job_id: str, states: tuple[str, ...], timeout: float = 120) -> dict:
    """Poll `detente party status --json` until the job is in one of ``states``."""
    deadline = time.monotonic() + timeout
    while True:
        status = json.loads(detente(["party", "status", job_id, "--json"], home).stdout)
        if status["state"] in states:
            return status
        assert time.monotonic() < deadline, f"job {job_id} stayed {status['state']}"
        time.sleep(0.3)


def canary_encodings(text: str | None = None, number: int | None = None) -> dict[str, bytes]:
    """The byte forms a planted value could take in a file, log or database."""
    import struct

    found: dict[str, bytes] = {}
    if text is not None:
        found["text as UTF-8"] = text.encode()
        found["text as UTF-16"] = text.encode("utf-16-le")
    if number is not None:
        found.update(
            {
                "number as text": str(number).encode(),
                "number as int64": struct.pack("<q", number),
                "number as int32": struct.pack("<i", number),
                "number as float64": struct.pack("<d", float(number)),
                "number as float32": struct.pack("<f", float(number)),
                "number as big-endian int64": struct.pack(">q", number),
            }
        )
    return found


def untrusted_files(running: Running) -> list[Path]:
    """Every file of the coordinator (database, blobs, logs) and of the enclave's host."""
    folders = [running.coordinator_home, running.root / "enclave-host"]
    return [p for folder in folders for p in folder.rglob("*") if p.is_file()]


def assert_nowhere(encodings: dict[str, bytes], files: list[Path]) -> None:
    assert any(p.suffix == ".db" for p in files), "the coordinator's database must be searched"
    assert any(p.name.endswith((".log", ".out")) for p in files), "logs must be searched"
    for path in files:
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            continue
        for what, pattern in encodings.items():
            assert pattern not in content, f"canary ({what}) found in {path}"
