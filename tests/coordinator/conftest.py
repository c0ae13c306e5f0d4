"""Fixtures for coordinator tests: a real coordinator on port 0 (SQLite in
tmp_path), parties, and a FAKE enclave server (TLS with a real RA-TLS certificate). Builders live in
coordinator_testkit.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from coordinator_postgres import PostgresServer
from coordinator_testkit import FakeEnclave, Harness, Party, serve_fake_enclave


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "coordinator-home"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the run, started only if a test needs it;
    a server that cannot start fails those tests (PostgresUnavailable says why)."""
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    """The coordinator's database: None (its SQLite file) or a fresh PostgreSQL database,
    migrated as an operator would. A module runs on both with
    ``pytestmark = pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)``."""
    if request.param == "sqlite":
        return None
    from coordinator.migrations import upgrade

    url = request.getfixturevalue("postgres").database()
    upgrade(url)
    return url


@pytest.fixture
def coord(home: Path, db_url: str | None) -> Iterator[Harness]:
    harness = Harness(home, db_url=db_url)
    yield harness
    harness.stop()


@pytest.fixture
def alice() -> Party:
    return Party("alice-bank")


@pytest.fixture
def bob() -> Party:
    return Party("bob-insurer")


@pytest.fixture
def carol() -> Party:
    return Party("carol-merchant")


@pytest.fixture
def fake_enclave() -> Iterator[tuple[FakeEnclave, str]]:
    with serve_fake_enclave() as (fake, address, _server):
        yield fake, address
