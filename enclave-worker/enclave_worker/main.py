"""Entry point of the enclave image: `detente libos run DIR -- [--port N] [--port-file F]`.

Runs inside the LibOS (libos.runtime.current() must exist). It unseals or
creates the enclave identity, makes a fresh TLS key and its RA-TLS
certificate, serves the Enclave gRPC API over TLS on loopback by default, with
the standard gRPC health service (grpc.health.v1.Health) beside it, and stops
cleanly on SIGTERM or SIGINT. With ``--join HOST:PORT`` it gets its identity
from a running worker of the same build instead (enclave_worker.provisioning),
and exits with code 2, saying why, if either side refuses the other.

Stopping drains: the health service answers NOT_SERVING (for "" and for the
Enclave service), new jobs are refused with WorkerBusy, and the running jobs
get up to ``--drain-seconds`` to finish; then the server stops, and a job
still running is stopped with its call (the coordinator runs it again,
resuming from its checkpoint).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from enclave_worker import identity, provisioning, service
from protocols import tls
from protocols.durable import write_atomic
from protocols.errors import DetenteError
from protocols.grpc_status import CHANNEL_OPTIONS


def _write_port(path: Path, port: int) -> None:
    write_atomic(path, str(port).encode())


def _root(text: str) -> str:
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits)")
    return text.lower()


def main(argv: list[str]) -> int:
    from libos import logs
    from libos import runtime as libos_runtime

    parser = argparse.ArgumentParser(prog="enclave-worker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path)
    parser.add_argument(
        "--join",
        metavar="HOST:PORT",
        help="get the pool's identity from this running worker of the same build "
        "(attested both ways), instead of making one",
    )
    parser.add_argument(
        "--pool-simulation-root",
        metavar="SHA256",
        action="append",
        default=[],
        type=_root,
        help="sim backend only: the SIMULATION root of another simulated machine of the pool, "
        "whose workers may join this one or be joined (repeat for each)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=5.0,
        help="on SIGTERM, how long running jobs may take to finish before they are stopped",
    )
    args = parser.parse_args(argv)

    rt = libos_runtime.current()
    log_dir = Path(rt.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    # worker.log is a host file: its tracebacks withhold foreign exception texts.
    logs.configure(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", filename=log_dir / "worker.log"
    )
    roots = tuple(args.pool_simulation_root)
    try:
        provisioning.peer_policy(rt, roots)  # refuses roots on a hardware backend
        me = provisioning.join(rt, args.join, roots) if args.join else identity.load_or_create(rt)
    except DetenteError as exc:
        what = f"cannot join the pool at {args.join}" if args.join else "cannot start"
        logging.getLogger("enclave_worker").error("%s: %s", what, exc)
        print(f"enclave worker: {what}: {exc}", file=sys.stderr)
        return 2
    # TLS only, with an RA-TLS certificate: clients verify the quote inside it
    # before they send a byte (protocols/SPEC.md §13).
    tls_key, certificate = identity.ratls_credentials(me, rt)
    slots = service.job_slots().slots
    # A running job holds a thread for its whole call (a health Watch too): room for
    # every slot, and for evidence, status, health checks, queries and joins beside them.
    server = grpc.server(ThreadPoolExecutor(max_workers=slots + 8), options=CHANNEL_OPTIONS)
    servicer = service.add_to_server(server, rt, me, roots)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_secure_port(
        f"{args.host}:{args.port}", tls.server_credentials(tls_key, certificate)
    )
    server.start()
    for name in ("", service.SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if args.port_file:
        _write_port(args.port_file, port)
    banner = (
        f"enclave worker on {args.host}:{port}, MRENCLAVE {me.mrenclave}, "
        f"signing key {me.signing_key.verify_key.hex[:16]}…, RA-TLS key "
        f"{me.tls_public_key_sha256[:16]}…"
    )
    if rt.backend == "sim":
        banner += " — SIMULATION backend: no hardware protection"
    print(banner, flush=True)
    logging.getLogger("enclave_worker").info(banner)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    # Drain: NOT_SERVING for every service, no new job, the running ones get a moment.
    health_servicer.enter_graceful_shutdown()
    servicer.slots.drain()
    running = servicer.slots.status().job_ids
    logging.getLogger("enclave_worker").info(
        "stopping: draining %d running jobs for up to %.0f s", len(running), args.drain_seconds
    )
    servicer.slots.wait_idle(args.drain_seconds)
    server.stop(grace=2).wait()
    return 0
