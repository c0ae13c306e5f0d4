"""A throwaway PostgreSQL server for the coordinator's tests: a real one, on a
loopback port, in a temporary directory, stopped by its own process id.

`make test` installs Debian's `postgresql` if it is missing. If the server
cannot be started here, the tests that need it fail saying why: nothing is
skipped silently. Run as root (the CI container), the server runs as the
``postgres`` user, because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

USER = "detente"
START_SECONDS = 30


class PostgresUnavailable(RuntimeError):
    """The throwaway PostgreSQL server could not be started (the message says why)."""


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise PostgresUnavailable(
            f"PostgreSQL's `{name}` is not installed: run `make test` (it installs Debian's "
            "postgresql package) or `apt-get update && apt-get install -y postgresql`"
        )
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """``initdb`` + ``postgres`` in a temporary directory; ``database()`` makes a fresh one."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="detente-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        as_root = os.geteuid() == 0
        self._run_as: dict[str, Any] = {"user": "postgres"} if as_root else {}
        if as_root:
            shutil.chown(self.root, "postgres")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        log = self.root / "initdb.log"
        with log.open("wb") as out:
            done = subprocess.run(
                [_binary("initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8"],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
                **self._run_as,
            )
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {log.read_text()[-2000:]}")
        server_log = (self.root / "postgres.log").open("wb")
        # Loopback only; fsync off: a throwaway server (the tests kill the coordinator,
        # never PostgreSQL).
        self.process = subprocess.Popen(
            [
                _binary("postgres"),
                "-D",
                str(self.data),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-F",
                "-c",
                "max_connections=200",
            ],
            stdout=server_log,
            stderr=subprocess.STDOUT,
            **self._run_as,
        )
        server_log.close()
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self.process.poll() is not None:
                raise PostgresUnavailable(
                    "postgres exited at start: " + (self.root / "postgres.log").read_text()[-2000:]
                )
            try:
                self._admin("SELECT 1")
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(
                        f"postgres did not accept connections within {START_SECONDS} s: {exc}"
                    ) from exc
                time.sleep(0.2)

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=USER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=5,
        ) as connection:
            connection.execute(sql)  # type: ignore[arg-type]

    def database(self) -> str:
        """A new empty database; its SQLAlchemy URL (psycopg 3 driver)."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self._admin(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGINT)  # "fast shutdown"
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None
        shutil.rmtree(self.root, ignore_errors=True)
