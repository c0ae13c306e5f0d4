"""Assemble and run the coordinator: store, blobs, handler, scheduler, gRPC server.

``serve`` is the process entry point (blocks until SIGTERM/SIGINT); ``start``
runs the same thing in-process for tests and returns a handle.

The server speaks TLS only, with a self-signed certificate made once and kept
in the home folder (key mode 0600); parties pin that certificate
(``detente party init --coordinator-cert``). Every request must be signed by
a party (:mod:`coordinator.auth`).
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.blobs import BlobStore
from coordinator.dashboard import RunningDashboard, start_dashboard
from coordinator.handler import CoordinatorHandler
from coordinator.limits import JobLimits
from coordinator.pool import CHECK_SECONDS, WorkerPool
from coordinator.servicer import CoordinatorServicer, request_authenticator
from coordinator.store import SqlStore
from protocols import tls
from protocols.audit_head import sign_head
from protocols.durable import write_atomic
from protocols.errors import PolicyError
from protocols.grpc_status import CHANNEL_OPTIONS
from protocols.keys import write_secret_file
from protocols.policy import AttestationPolicy
from protocols.wire.v1 import coordinator_pb2_grpc

log = logging.getLogger("coordinator")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(threadName)s: %(message)s"
TLS_KEY_NAME = "coordinator-tls.key"
TLS_CERT_NAME = "coordinator-tls.crt"
# The name in the certificate; parties' channels expect it whatever address they dial.
TLS_COMMON_NAME = "detente-coordinator"


def certificate_path(home: Path) -> Path:
    """Where the coordinator's TLS certificate (public: give it to parties) is kept."""
    return Path(home) / TLS_CERT_NAME


def tls_identity(home: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The coordinator's TLS key and self-signed certificate, created on first start."""
    key_path, cert_path = Path(home) / TLS_KEY_NAME, certificate_path(home)
    if key_path.exists() and cert_path.exists():
        if key_path.stat().st_mode & 0o077:
            raise PolicyError(f"{key_path} is readable by others: run `chmod 600 {key_path}`")
        key = tls.load_private_key(key_path.read_bytes(), str(key_path))
        cert = tls.load_certificate(cert_path.read_bytes(), str(cert_path))
        if tls.public_key_sha256(cert) != tls.public_key_sha256(key.public_key()):
            raise PolicyError(
                f"{cert_path} is not the certificate of {key_path}: restore the pair, or delete "
                "both to make a new one (every party must then pin the new certificate)"
            )
        return key, cert
    key = tls.generate_key()
    cert = tls.self_signed_certificate(key, TLS_COMMON_NAME)
    write_secret_file(key_path, tls.private_key_pem(key))
    write_atomic(cert_path, tls.certificate_pem(cert))
    log.info("created the coordinator's TLS certificate %s", cert_path)
    return key, cert


def head_signer(key: ec.EllipticCurvePrivateKey) -> Callable[[int, str], bytes]:
    """Signs each new audit head with the coordinator's TLS key (the key parties pin)."""
    return functools.partial(sign_head, key)


def default_db_url(home: Path) -> str:
    return f"sqlite:///{Path(home).resolve() / 'coordinator.db'}"


def _write_port_file(path: Path, port: int) -> None:
    """Write the bound port atomically, so a reader never sees a partial number."""
    write_atomic(path, f"{port}\n".encode())


@dataclass
class RunningCoordinator:
    """A coordinator serving in this process."""

    home: Path
    port: int
    server: grpc.Server
    handler: CoordinatorHandler
    store: SqlStore
    _log_handler: logging.Handler | None = None
    dashboard: RunningDashboard | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def certificate_path(self) -> Path:
        return certificate_path(self.home)

    def stop(self, grace: float = 2.0) -> None:
        if self.dashboard is not None:
            self.dashboard.stop()
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
    enclave_policy: AttestationPolicy | None = None,
    limits: JobLimits | None = None,
    dashboard: tuple[str, int] | None = None,
    dashboard_token: str | None = None,
    enclaves: Sequence[str] = (),
    worker_check_seconds: float = CHECK_SECONDS,
) -> RunningCoordinator:
    """Start a coordinator in this process; returns once it is serving.

    ``enclave`` and ``enclaves`` are workers (HOST:PORT) added to the pool
    kept in the store (:mod:`coordinator.pool`); workers registered before
    stay in it. ``enclave_policy`` is required for any worker: the
    coordinator talks only to workers whose RA-TLS certificate passes it.
    ``dashboard`` (host, port) also serves the operator's dashboard there
    (:mod:`coordinator.dashboard`), started before the port file is written.
    """
    addresses = list(dict.fromkeys([*enclaves, *([enclave] if enclave else [])]))
    if addresses and enclave_policy is None:
        raise PolicyError(
            "an enclave needs an attestation policy: pass --enclave-policy FILE (the same "
            "kind of policy parties use; see docs/operations.md)"
        )
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    tls_key, tls_cert = tls_identity(home)
    log_handler = _add_log_file(home) if log_to_file else None
    store = SqlStore(db_url or default_db_url(home), head_signer=head_signer(tls_key))
    blobs = BlobStore(home / "blobs")
    pool = WorkerPool(store, enclave_policy, interval=worker_check_seconds)
    for address in addresses:
        pool.register(address)
    if enclave_policy is None and store.list_workers():
        log.warning(
            "workers are registered but no --enclave-policy is given: no job runs until the "
            "coordinator is restarted with one"
        )
    handler = CoordinatorHandler(store, blobs, pool, limits)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=8),
        options=CHANNEL_OPTIONS,
        interceptors=[request_authenticator(store)],
    )
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(handler), server)
    bound = server.add_secure_port(f"{host}:{port}", tls.server_credentials(tls_key, tls_cert))
    if bound == 0:
        store.close()
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    handler.start()
    board = None
    if dashboard is not None:
        try:
            board = start_dashboard(store, pool, home, *dashboard, token=dashboard_token)
        except BaseException:
            server.stop(grace=0).wait()
            handler.stop()
            store.close()
            raise
    if port_file is not None:
        _write_port_file(Path(port_file), bound)
    log.info(
        "coordinator serving TLS on %s:%d (workers: %s); certificate %s",
        host,
        bound,
        ", ".join(w.address for w in pool.workers()) or "none registered",
        certificate_path(home),
    )
    return RunningCoordinator(home, bound, server, handler, store, log_handler, board)


def serve(
    home: Path,
    db_url: str | None,
    host: str,
    port: int,
    enclaves: Sequence[str],
    port_file: Path | None,
    enclave_policy: AttestationPolicy | None = None,
    limits: JobLimits | None = None,
    dashboard: tuple[str, int] | None = None,
    worker_check_seconds: float = CHECK_SECONDS,
) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    running = start(
        home,
        db_url,
        host,
        port,
        None,
        port_file,
        enclave_policy=enclave_policy,
        limits=limits,
        dashboard=dashboard,
        enclaves=enclaves,
        worker_check_seconds=worker_check_seconds,
    )
    print(
        f"coordinator serving TLS on {host}:{running.port}; its certificate is "
        f"{running.certificate_path.resolve()} (parties pin it: `detente party init "
        f"--coordinator-cert {running.certificate_path.resolve()}`)",
        flush=True,
    )
    if running.dashboard is not None:
        # Printed once; it is also in the 0600 file named here.
        print(
            f"dashboard at {running.dashboard.url} — operator token (also in "
            f"{running.dashboard.token_file}): {running.dashboard.token}",
            flush=True,
        )
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
