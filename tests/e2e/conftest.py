"""Shared pieces for end-to-end tests: a small slice of the credit data, real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from coordinator.enclave_client import EnclaveClient
from experiments.demo import DEFAULT_DATA, Cluster, cluster, start_roles
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
    def __init__(
        self,
        c: Cluster,
        root: Path,
        address: str,
        enclave: str,
        measured: dict,
        coordinator_cert: Path | None = None,
    ) -> None:
        self.c, self.root, self.address, self.enclave, self.measured = (
            c,
            root,
            address,
            enclave,
            measured,
        )
        self.coordinator_cert = coordinator_cert

    def policy(self, mrenclave: str | None = None, simulation: bool = True) -> Path:
        path = self.root / f"policy-{mrenclave or 'ok'}-{simulation}.toml"
        path.write_text(
            f'mrenclave = ["{mrenclave or self.measured["mrenclave"]}"]\n'
            f"allow_simulation = {'true' if simulation else 'false'}\n"
            f'simulation_roots = ["{self.measured["simulation_root_sha256"]}"]\n'
        )
        return path

    def party(self, name: str) -> Path:
        home = self.root / f"party-{name}"
        home.mkdir()
        self.c.run(
            [
                "party",
                "init",
                "--name",
                name,
                "--coordinator",
                self.address,
                "--policy",
                str(self.policy()),
                "--coordinator-cert",
                str(self.coordinator_cert),
            ],
            home,
        )
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
        roles = start_roles(c, root)
        yield Running(
            c, root, roles.coordinator, roles.enclave, roles.measured, roles.coordinator_cert
        )


def write_csv(table: pa.Table, path: Path) -> Path:
    pacsv.write_csv(table, path)
    return path
