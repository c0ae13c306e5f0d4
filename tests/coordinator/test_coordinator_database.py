"""The coordinator's database: Alembic migrations, SQLite and PostgreSQL, and what a
real coordinator process keeps across kill -9 (replay protection, uploads).

The process tests start `python -m coordinator serve` and kill it by its pid,
on SQLite and on a real PostgreSQL (a throwaway server, conftest.postgres).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from coordinator_testkit import BOTH_DATABASES, Party, seal_dataset, upload_requests
from typer.testing import CliRunner

from coordinator import migrations
from coordinator.blobs import BlobStore
from coordinator.cli import app
from coordinator.handler import issue_enrollment
from coordinator.server import default_db_url
from coordinator.store import SqlStore
from protocols import tls
from protocols.errors import SetupError
from protocols.grpc_status import CHANNEL_OPTIONS
from protocols.keys import SigningKey
from protocols.request_auth import sign_request
from protocols.wire.v1 import coordinator_pb2 as pb
from protocols.wire.v1 import coordinator_pb2_grpc

SERVICE = "/detente.v1.Coordinator/"
ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- migrations


def test_a_fresh_sqlite_file_gets_the_newest_schema(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        with store.engine.connect() as connection:
            assert migrations.current_revision(connection) == migrations.head_revision()
    finally:
        store.close()


def test_the_migrations_build_exactly_the_schema_of_the_tables(tmp_path: Path) -> None:
    """A change to coordinator/store/tables.py without its migration fails here."""
    from alembic import command
    from sqlalchemy import create_engine

    url = f"sqlite:///{tmp_path / 'check.db'}"
    migrations.upgrade(url)
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            command.check(migrations._config(connection))  # raises on any difference
    finally:
        engine.dispose()


def test_an_unmigrated_postgresql_database_is_refused_naming_migrate(postgres: Any) -> None:
    url = postgres.database()
    with pytest.raises(SetupError, match="run `detente coordinator migrate --db-url "):
        SqlStore(url)
    before, after = migrations.upgrade(url)
    assert (before, after) == (None, migrations.head_revision())
    SqlStore(url).close()


def _at_first_revision(url: str) -> None:
    """A database at the first schema, as an older coordinator left it."""
    from alembic import command
    from sqlalchemy import create_engine

    engine = create_engine(url)
    with engine.begin() as connection:
        command.upgrade(migrations._config(connection), migrations.FIRST_REVISION)
    engine.dispose()


def test_an_outdated_database_is_refused_until_the_cli_migrates_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    _at_first_revision(default_db_url(home))
    with pytest.raises(SetupError) as refused:
        SqlStore(default_db_url(home))
    assert "is at schema revision 0001_initial, not the newest" in str(refused.value)
    assert "detente coordinator migrate" in str(refused.value)
    result = CliRunner().invoke(app, ["migrate", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert f"to {migrations.head_revision()}" in result.output
    SqlStore(default_db_url(home)).close()
    again = CliRunner().invoke(app, ["migrate", "--home", str(home)])
    assert "already at the newest schema" in again.output


def test_a_database_from_before_migrations_is_stamped_and_keeps_its_rows(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    url = f"sqlite:///{tmp_path / 'old.db'}"
    _at_first_revision(url)
    engine = create_engine(url)
    with engine.begin() as connection:  # what create_all left: no alembic_version
        connection.execute(text("DROP TABLE alembic_version"))
        connection.execute(
            text(
                "INSERT INTO audit_log (seq, at, event, subject, detail, prev_hash, hash) "
                "VALUES (1, 0, 'e', 's', '{}', :z, :h)"
            ),
            {"z": "00" * 32, "h": "11" * 32},
        )
    engine.dispose()
    with pytest.raises(SetupError, match="has no schema yet"):
        SqlStore(url)
    assert migrations.upgrade(url) == (migrations.FIRST_REVISION, migrations.head_revision())
    store = SqlStore(url)
    try:
        assert [e.hash for e in store.audit_entries()] == ["11" * 32]
    finally:
        store.close()


# --------------------------------------------------------------------------- real processes


class CoordinatorProcess:
    """`python -m coordinator serve` in a child process, killed by its own pid."""

    def __init__(self, home: Path, db_url: str | None) -> None:
        self.home, self.db_url = home, db_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        port_file = self.home.parent / "port"
        port_file.unlink(missing_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "coordinator"), str(ROOT / "protocols"), env.get("PYTHONPATH", "")]
        )
        command = [sys.executable, "-m", "coordinator", "serve", "--home", str(self.home)]
        command += ["--port-file", str(port_file)]
        command += ["--db-url", self.db_url] if self.db_url else []
        self.proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise AssertionError(self.proc.stderr.read().decode() if self.proc.stderr else "")
            assert time.monotonic() < deadline, "the coordinator did not write its port file"
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def stub(self) -> tuple[grpc.Channel, Any]:
        cert = tls.load_certificate((self.home / "coordinator-tls.crt").read_bytes(), "cert")
        channel = tls.pinned_channel(f"127.0.0.1:{self.port}", cert, CHANNEL_OPTIONS)
        return channel, coordinator_pb2_grpc.CoordinatorStub(channel)

    def enroll(self, name: str) -> str:
        store = SqlStore(self.db_url or default_db_url(self.home))
        try:
            return issue_enrollment(store, name)[0]
        finally:
            store.close()


@pytest.fixture
def process(tmp_path: Path, db_url: str | None) -> Iterator[CoordinatorProcess]:
    running = CoordinatorProcess(tmp_path / "home", db_url)
    running.start()
    yield running
    running.stop()


def signed(key: SigningKey, method: str, request: Any) -> list[tuple[str, str]]:
    return sign_request(key, SERVICE + method, request.SerializeToString())


def register(process: CoordinatorProcess, stub: Any, party: Party) -> None:
    request = pb.RegisterPartyRequest(
        registration=party.registration(), enrollment_token=process.enroll(party.name)
    )
    stub.RegisterParty(request, metadata=signed(party.key, "RegisterParty", request), timeout=10)


@pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)
def test_a_request_captured_before_a_restart_is_refused_after_it(
    process: CoordinatorProcess, alice: Party
) -> None:
    channel, stub = process.stub()
    with channel:
        register(process, stub, alice)
        listing = pb.ListPartiesRequest()
        captured = signed(alice.key, "ListParties", listing)
        assert stub.ListParties(listing, metadata=captured, timeout=10).parties
    process.kill9()
    process.start()
    channel, stub = process.stub()
    with channel:
        with pytest.raises(grpc.RpcError) as replayed:
            stub.ListParties(listing, metadata=captured, timeout=10)
        assert replayed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert (replayed.value.details() or "").startswith("replayed request")
        # The same request signed afresh is served.
        fresh = signed(alice.key, "ListParties", listing)
        assert stub.ListParties(listing, metadata=fresh, timeout=10).parties


@pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)
def test_kill_9_mid_upload_loses_nothing_accepted_and_lists_nothing_partial(
    process: CoordinatorProcess, alice: Party
) -> None:
    kept = seal_dataset(alice, "alice-kept", plaintext=os.urandom(50_000))
    cut = seal_dataset(alice, "alice-cut", plaintext=os.urandom(400_000))
    channel, stub = process.stub()
    halfway = threading.Event()
    hold = threading.Event()

    def upload(dataset: Any, pause: bool) -> Iterator[pb.UploadDatasetRequest]:
        for i, message in enumerate(upload_requests(dataset.manifest_bytes, dataset.ciphertext)):
            if pause and i == 40:
                halfway.set()
                hold.wait(30)
            yield message

    def send(dataset: Any, pause: bool = False) -> Any:
        pieces = upload(dataset, pause)
        first = next(pieces)
        metadata = signed(alice.key, "UploadDataset", first)

        def all_pieces() -> Iterator[pb.UploadDatasetRequest]:
            yield first
            yield from pieces

        return stub.UploadDataset(all_pieces(), metadata=metadata, timeout=60)

    with channel:
        register(process, stub, alice)
        assert send(kept).dataset_id == "alice-kept"
        outcome: list[Any] = []
        sender = threading.Thread(
            target=lambda: outcome.append(_error_or(send, cut, True)), daemon=True
        )
        sender.start()
        assert halfway.wait(30), "the upload did not get halfway"
        time.sleep(0.3)  # the coordinator is writing the blob
        process.kill9()
        hold.set()
        sender.join(30)
        assert outcome and isinstance(outcome[0], grpc.RpcError)  # the sender is told
    process.start()
    channel, stub = process.stub()
    with channel:
        listing = pb.ListDatasetsRequest()
        datasets = stub.ListDatasets(
            listing, metadata=signed(alice.key, "ListDatasets", listing), timeout=10
        ).datasets
        assert [d.dataset_id for d in datasets] == ["alice-kept"]
        # The accepted dataset's ciphertext is whole, by its manifest's digest.
        store = SqlStore(process.db_url or default_db_url(process.home))
        try:
            record = store.get_dataset("alice-kept")
        finally:
            store.close()
        assert record is not None
        blob = BlobStore(process.home / "blobs").path(record.blob_sha256)
        assert blob.read_bytes() == kept.ciphertext
        # The cut upload is sent again and accepted.
        assert send(cut).dataset_id == "alice-cut"


def _error_or(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except grpc.RpcError as exc:
        return exc


def test_two_replicas_on_one_postgresql_database_keep_one_chain(postgres: Any) -> None:
    """Two stores (as two coordinator replicas would) writing at once: every audit entry
    links to the one before, and a nonce one replica saw is refused by the other."""
    from coordinator.store import EnrollmentRecord, verify_audit_chain
    from coordinator.store.audit import Audit

    url = postgres.database()
    migrations.upgrade(url)
    replicas = [SqlStore(url), SqlStore(url)]
    errors: list[BaseException] = []

    def enroll(store: SqlStore, prefix: str) -> None:
        try:
            for i in range(15):
                name = f"{prefix}-{i}"
                record = EnrollmentRecord(name, "00" * 32, 1, 2**40, None, None)
                store.add_enrollment(record, Audit("party.enrollment_issued", name))
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [
            threading.Thread(target=enroll, args=(store, f"r{n}"))
            for n, store in enumerate(replicas)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert verify_audit_chain(replicas[0].audit_entries()) == 30
        assert replicas[0].remember_nonce("k" * 64, "n" * 32, 2**40, 0)
        assert not replicas[1].remember_nonce("k" * 64, "n" * 32, 2**40, 0)
    finally:
        for store in replicas:
            store.close()
