"""Shared pieces for end-to-end tests: a small slice of the credit data, real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from coordinator.enclave_client import EnclaveClient
from experiments.demo import DEFAULT_DATA, Cluster, Roles, cluster, start_roles
from party_client.home import PartyHome
from party_client.remote import Coordinator
from protocols.policy import AttestationPolicy

LABEL = "default.payment.next.month"


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 rows of the real credit data set (the first rows, all columns)."""
    table = pacsv.read_csv(DEFAULT_DATA).slice(0, 600)
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
        path = self.root / f"policy-{mrenclave or 'ok'}-{simulation}.toml"
        path.write_text(
            f'mrenclave = ["{mrenclave or self.measured["mrenclave"]}"]\n'
            f"allow_simulation = {'true' if simulation else 'false'}\n"
            f'simulation_roots = ["{self.measured["simulation_root_sha256"]}"]\n'
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
