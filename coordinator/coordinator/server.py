"""Assemble and run the coordinator: store, blobs, handler, scheduler, gRPC server.

``serve`` is the process entry point (blocks until SIGTERM/SIGINT); ``start``
runs the same thing in-process for tests and returns a handle.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc

from coordinator.blobs import BlobStore
from coordinator.enclave_client import CHANNEL_OPTIONS, EnclaveClient
from coordinator.handler import CoordinatorHandler
from coordinator.servicer import CoordinatorServicer
from coordinator.store import SqlStore
from protocols.wire.v1 import coordinator_pb2_grpc

log = logging.getLogger("coordinator")
SERVER_OPTIONS = CHANNEL_OPTIONS
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(threadName)s: %(message)s"


def default_db_url(home: Path) -> str:
    return f"sqlite:///{Path(home).resolve() / 'coordinator.db'}"


def write_port_file(path: Path, port: int) -> None:
    """Write the bound port atomically, so a reader never sees a partial number."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{port}\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class RunningCoordinator:
    """A coordinator serving in this process."""

    home: Path
    port: int
    server: grpc.Server
    handler: CoordinatorHandler
    store: SqlStore
    _log_handler: logging.Handler | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 2.0) -> None:
        self.server.stop(grace=grace).wait()
        self.handler.stop()
        self.store.close()
        if self._log_handler is not None:
            log.info("coordinator stopped")
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()

    def wait(self) -> None:
        self.server.wait_for_termination()


def _add_log_file(home: Path) -> logging.Handler:
    handler = logging.FileHandler(home / "coordinator.log", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


def start(
    home: Path,
    db_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    enclave: str | None = None,
    port_file: Path | None = None,
    log_to_file: bool = True,
) -> RunningCoordinator:
    """Start a coordinator in this process; returns once it is serving."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    log_handler = _add_log_file(home) if log_to_file else None
    store = SqlStore(db_url or default_db_url(home))
    blobs = BlobStore(home / "blobs")
    handler = CoordinatorHandler(store, blobs, EnclaveClient(enclave) if enclave else None)
    server = grpc.server(ThreadPoolExecutor(max_workers=8), options=SERVER_OPTIONS)
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(handler), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        store.close()
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    handler.start()
    if port_file is not None:
        write_port_file(Path(port_file), bound)
    log.info("coordinator serving on %s:%d (enclave %s)", host, bound, enclave or "not configured")
    return RunningCoordinator(home, bound, server, handler, store, log_handler)


def serve(
    home: Path,
    db_url: str | None,
    host: str,
    port: int,
    enclave: str | None,
    port_file: Path | None,
) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    running = start(home, db_url, host, port, enclave, port_file)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        running.stop(grace=2.0)
