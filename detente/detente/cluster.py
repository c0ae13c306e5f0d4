"""Every role a real process: start an enclave worker and a coordinator, run `detente` commands.

The demo, the end-to-end tests and the benchmarks share this harness. Each
role runs as its own ``python -m detente`` process with its own folder; the
harness stops exactly the processes it started, by their process ids.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocols.errors import DetenteError

__all__ = [
    "START_TIMEOUT",
    "Cluster",
    "ClusterError",
    "EnclaveWorker",
    "Process",
    "Roles",
    "cluster",
    "detente_command",
    "start_coordinator",
    "start_enclave",
    "start_enclave_pool",
    "start_pool_roles",
    "start_roles",
    "write_policy",
]

START_TIMEOUT = 120.0


class ClusterError(DetenteError):
    """A role's process did not start, or a `detente` command it ran failed."""


def detente_command() -> list[str]:
    """The `detente` command of this interpreter (whatever installed it, editable or not)."""
    return [sys.executable, "-m", "detente"]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Stop by our own process id: SIGTERM, then SIGKILL after a grace period."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


@dataclass
class Cluster:
    workdir: Path
    env: dict[str, str]
    processes: list[Process] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    seen_messages: set[str] = field(default_factory=set)

    def run(self, args: list[str], home: Path | None = None, check: bool = True) -> str:
        env = dict(self.env)
        if home is not None:
            env["DETENTE_HOME"] = str(home)
        done = subprocess.run(
            [*detente_command(), *args], env=env, capture_output=True, text=True, timeout=600
        )
        if check and done.returncode != 0:
            raise ClusterError(f"`detente {' '.join(args)}` failed:\n{done.stderr.strip()}")
        message = done.stderr.strip()
        if message and message not in self.seen_messages:  # each warning once
            self.seen_messages.add(message)
            print(message, file=sys.stderr)
        return done.stdout

    def spawn(self, name: str, args: list[str], port_file: Path, log_dir: Path) -> int:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{name}.out"
        with log.open("wb") as sink:
            popen = subprocess.Popen(
                [*detente_command(), *args], env=self.env, stdout=sink, stderr=subprocess.STDOUT
            )
        self.processes.append(Process(name, popen, log))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if port_file.exists():
                return int(port_file.read_text())
            if popen.poll() is not None:
                raise ClusterError(
                    f"{name} exited with {popen.returncode}:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.05)
        raise ClusterError(f"{name} did not start within {START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@dataclass
class Roles:
    coordinator: str  # HOST:PORT
    enclave: str  # HOST:PORT
    measured: dict[str, Any]  # `detente libos measure --json`
    policy: Path  # the attestation policy the coordinator and the parties use
    coordinator_cert: Path  # the coordinator's TLS certificate, pinned by the parties
    coordinator_home: Path  # the coordinator's folder (database, blobs, log)

    def enroll(self, c: Cluster, name: str) -> str:
        """Issue a one-time enrollment token for ``name``, as the operator does."""
        args = ["coordinator", "enroll", "--home", str(self.coordinator_home), "--name", name]
        return str(json.loads(c.run([*args, "--json"]))["token"])

    def init_party(self, c: Cluster, name: str, home: Path, policy: Path | None = None) -> None:
        """Enroll ``name`` and run `detente party init` in ``home`` with that token."""
        c.run(
            [
                "party",
                "init",
                "--name",
                name,
                "--coordinator",
                self.coordinator,
                "--policy",
                str(policy or self.policy),
                "--coordinator-cert",
                str(self.coordinator_cert),
                "--enrollment-token",
                self.enroll(c, name),
            ],
            home,
        )


def write_policy(path: Path, measured: dict[str, Any], roots: list[str] | None = None) -> Path:
    """A policy that trusts exactly the build ``measured`` describes, on its simulated platform
    (or on each of ``roots``, the simulated machines of a pool)."""
    listed = ", ".join(f'"{r}"' for r in roots or [measured["simulation_root_sha256"]])
    path.write_text(
        "# Demo policy: trusts exactly this enclave build, and accepts SIMULATION\n"
        "# evidence (no hardware protection) from these simulated platforms only.\n"
        f'mrenclave = ["{measured["mrenclave"]}"]\n'
        "allow_simulation = true\n"
        f"simulation_roots = [{listed}]\n"
    )
    return path


def start_enclave(c: Cluster, root: Path) -> tuple[int, dict[str, Any], Path]:
    """Build the enclave image in ``enclave-host/`` and start the worker as a process.

    Returns its port, `detente libos measure --json` and the policy file that
    trusts exactly this build (``policy.toml``).
    """
    host = root / "enclave-host"
    instance = host / "instance"
    c.run(["libos", "init", str(instance)])
    c.run(["libos", "build", str(instance)])
    measured = json.loads(c.run(["libos", "measure", str(instance), "--json"]))
    port_file = host / "enclave.port"
    port = c.spawn(
        "enclave",
        ["libos", "run", str(instance), "--", "--port-file", str(port_file)],
        port_file,
        host / "logs",
    )
    return port, measured, write_policy(root / "policy.toml", measured)


@dataclass(frozen=True)
class EnclaveWorker:
    """One enclave worker of a pool, started by :func:`start_enclave_pool`."""

    name: str
    address: str  # HOST:PORT
    pid: int
    instance: Path  # its ENCLAVE_DIR
    simulation_root: str  # SHA-256 of its simulated machine's root


def start_enclave_pool(
    c: Cluster, root: Path, count: int, worker_args: list[str] | None = None
) -> tuple[list[EnclaveWorker], dict[str, Any], Path]:
    """Start ``count`` workers of one build in ``enclave-pool/``, each a process.

    Each instance is its own simulated machine (its ``platform/``); they share
    one ``libos.toml`` and signer key, so one MRENCLAVE and MRSIGNER. The first
    starts as a plain worker; the others ``--join`` it and present its
    identity. Each trusts the others' simulated roots (``--pool-simulation-root``).
    Returns the workers, `detente libos measure --json` of the build, and a
    policy (``policy.toml``) that trusts that build on every machine of the pool.
    """
    if count < 1:
        raise ValueError(f"a pool needs at least one worker, got {count}")
    pool = root / "enclave-pool"
    instances = [pool / f"worker-{n}" for n in range(count)]
    c.run(["libos", "init", str(instances[0])])
    for instance in instances[1:]:
        instance.mkdir(parents=True)
        for name in ("libos.toml", "signer.key"):
            (instance / name).write_bytes((instances[0] / name).read_bytes())
            (instance / name).chmod((instances[0] / name).stat().st_mode)
    measures = []
    for instance in instances:
        c.run(["libos", "build", str(instance)])
        measures.append(json.loads(c.run(["libos", "measure", str(instance), "--json"])))
    if len({m["mrenclave"] for m in measures}) != 1:
        raise ClusterError("the pool's instances were built to different measurements")
    roots = [str(m["simulation_root_sha256"]) for m in measures]
    workers: list[EnclaveWorker] = []
    for n, instance in enumerate(instances):
        args = [*(worker_args or [])]
        for other in roots[:n] + roots[n + 1 :]:
            args += ["--pool-simulation-root", other]
        if workers:
            args += ["--join", workers[0].address]
        port_file = instance.parent / f"worker-{n}.port"
        name = f"enclave-{n}"
        run = ["libos", "run", str(instance), "--", "--port-file", str(port_file), *args]
        port = c.spawn(name, run, port_file, pool / "logs")
        pid = c.processes[-1].popen.pid
        workers.append(EnclaveWorker(name, f"127.0.0.1:{port}", pid, instance, roots[n]))
    return workers, measures[0], write_policy(root / "policy.toml", measures[0], roots)


def start_coordinator(
    c: Cluster,
    coord: Path,
    enclave: str | Sequence[str],
    policy: Path,
    extra: list[str] | None = None,
    name: str = "coordinator",
) -> int:
    """Start a coordinator process in ``coord`` that runs jobs on ``enclave`` (one worker's
    HOST:PORT, or every worker of a pool); its port."""
    serve = ["coordinator", "serve", "--home", str(coord), "--port-file", str(coord / "port")]
    workers = [enclave] if isinstance(enclave, str) else list(enclave)
    args = [arg for address in workers for arg in ("--enclave", address)]
    return c.spawn(
        name,
        [*serve, *args, "--enclave-policy", str(policy), *(extra or [])],
        coord / "port",
        coord,
    )


def start_roles(c: Cluster, root: Path, coordinator_args: list[str] | None = None) -> Roles:
    """Start the enclave worker and the coordinator, each a process in its own folder.

    The coordinator checks the enclave's RA-TLS certificate with the same policy
    the parties get (``policy.toml``).
    """
    enclave_port, measured, policy = start_enclave(c, root)
    coord = root / "coordinator"
    enclave = f"127.0.0.1:{enclave_port}"
    coord_port = start_coordinator(c, coord, enclave, policy, coordinator_args)
    from coordinator.server import certificate_path

    # The coordinator makes its certificate before it writes its port file.
    return Roles(
        f"127.0.0.1:{coord_port}", enclave, measured, policy, certificate_path(coord), coord
    )


def start_pool_roles(
    c: Cluster, root: Path, count: int, coordinator_args: list[str] | None = None
) -> tuple[Roles, list[EnclaveWorker]]:
    """Start ``count`` enclave workers of one identity (:func:`start_enclave_pool`) and a
    coordinator that runs jobs on all of them; ``Roles.enclave`` is the first worker."""
    workers, measured, policy = start_enclave_pool(c, root, count)
    coord = root / "coordinator"
    addresses = [w.address for w in workers]
    coord_port = start_coordinator(c, coord, addresses, policy, coordinator_args)
    from coordinator.server import certificate_path

    roles = Roles(
        f"127.0.0.1:{coord_port}", addresses[0], measured, policy, certificate_path(coord), coord
    )
    return roles, workers


@contextmanager
def cluster(workdir: Path) -> Iterator[Cluster]:
    """A harness whose processes run without the caller's DETENTE_* settings; stops them all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETENTE_")}
    env["PYTHONUNBUFFERED"] = "1"
    c = Cluster(workdir, env)
    try:
        yield c
    finally:
        c.stop()
