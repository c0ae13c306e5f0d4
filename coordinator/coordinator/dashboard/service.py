"""Run the dashboard in a thread of the coordinator process (uvicorn), and stop it.

The socket is bound in the caller's thread, so a busy port or a refused
address fails the coordinator's start with a clear error, and the bound
port is known before the coordinator reports itself ready.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from coordinator.dashboard.access import Sessions, check_loopback, operator_token
from coordinator.dashboard.app import create_app, with_trusted_hosts
from coordinator.dashboard.views import Views
from coordinator.pool import WorkerPool
from coordinator.store import CoordinatorStore
from protocols.durable import write_atomic
from protocols.errors import SetupError

log = logging.getLogger(__name__)

START_TIMEOUT = 20.0
# In the coordinator's home, once the dashboard serves: its address (public), for scripts
# and tests that asked for port 0.
URL_FILE_NAME = "dashboard.url"
STOP_TIMEOUT = 10.0


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → (host, port); loopback hosts only."""
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise SetupError(
            f"--dashboard {address!r} is not HOST:PORT: give for example 127.0.0.1:8080 "
            "(port 0 picks a free one)"
        )
    check_loopback(host)
    return host, int(port_text)


@dataclass
class RunningDashboard:
    """The dashboard serving in a thread of this process."""

    host: str
    port: int
    token_file: Path
    token: str
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=STOP_TIMEOUT)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout=STOP_TIMEOUT)
        log.info("dashboard stopped")


def start_dashboard(
    store: CoordinatorStore,
    pool: WorkerPool,
    home: Path,
    host: str,
    port: int,
    token: str | None = None,
) -> RunningDashboard:
    """Serve the dashboard on ``host:port`` (loopback) until :meth:`RunningDashboard.stop`."""
    check_loopback(host)
    token, token_file = operator_token(home, token)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SetupError(
            f"the dashboard cannot listen on {host}:{port} ({exc.strerror}): choose another "
            "port with --dashboard HOST:PORT"
        ) from None
    sock.listen(64)
    bound = int(sock.getsockname()[1])
    # The workers as the pool last checked them (kept in the store).
    views = Views(store, pool.policy is not None and pool.policy.allow_simulation)
    app = with_trusted_hosts(create_app(views, token, Sessions()), host)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    # Not in the main thread: uvicorn installs no signal handler; the coordinator's stop does.
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="dashboard", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise SetupError(f"the dashboard did not start on {host}:{bound}: see the log")
        time.sleep(0.02)
    running = RunningDashboard(host, bound, token_file, token, server, thread)
    write_atomic(Path(home) / URL_FILE_NAME, f"{running.url}\n".encode())
    log.info("dashboard serving on %s (operator token in %s)", running.url, token_file)
    return running
