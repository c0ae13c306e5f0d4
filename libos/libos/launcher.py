"""The host side of an enclave: check the image, then start its interpreter, and measure a start.

``run(DIR, argv)`` checks the image's signature, signer and own files, then
starts a fresh interpreter::

    python -B -P -S -m libos.enclave_start DIR -- argv...

with ``PYTHONPATH`` set to ``DIR/image/root`` and the site-packages
directories only, and ``-S`` so no ``.pth`` file (editable-install hooks,
repository folders) runs: that interpreter imports the image's own copy of
``libos`` and ``protocols`` and nothing outside the image and the measured
distributions. There :func:`libos.enclave_start.enter` makes it an enclave.

``startup_probe(DIR)`` starts it the same way up to the entry point and
reports the idle memory and the start time, which ``detente libos build``
prints.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from protocols.errors import IntegrityError, PolicyError

PLATFORM_DIR_ENV = "DETENTE_LIBOS_PLATFORM_DIR"
# The module every enclave process starts with (``python -m``): libos.enclave_start.
ENCLAVE_MODULE = "libos.enclave_start"
STARTUP_PROBE = "--startup-probe"


def platform_dir(instance_dir: Path) -> Path:
    """Where the SIMULATION platform lives: ``$DETENTE_LIBOS_PLATFORM_DIR`` or ``DIR/platform``."""
    override = os.environ.get(PLATFORM_DIR_ENV)
    return Path(override) if override else Path(instance_dir) / "platform"


def interpreter_command(module: str) -> list[str]:
    """``python -B -P -S -m MODULE``: how every enclave process starts (no site, no .pth, no pyc).

    libos.process uses it for child processes, so they start like the entry point.
    """
    return [sys.executable, "-B", "-P", "-S", "-m", module]


def python_path(root: Path) -> str:
    """PYTHONPATH of an enclave process: the image root, then site-packages (measured files)."""
    from libos.image import site_dirs

    return os.pathsep.join([str(root), *(str(d) for d in site_dirs())])


def command(instance_dir: Path, argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Check the image and return the command line and environment that run it.

    This host-side check covers the signature, the pinned signer, the config and
    the image's own files, and that each distribution is installed at its
    measured version; the enclave process checks the dependency files itself.
    """
    from libos import limits
    from libos.image import verify_image

    verified = verify_image(instance_dir, dependencies="versions")
    config = verified.config
    if config.backend == "gramine":
        raise PolicyError(
            f"{instance_dir}: backend 'gramine' runs under gramine-sgx, not `detente libos "
            f"run`: write its manifest with `detente libos export --target gramine "
            f"{instance_dir} OUT`, then sign and start it with gramine-sgx-sign and gramine-sgx"
        )
    env = {k: v for k, v in os.environ.items() if config.env_allowed(k)}
    budget = limits.Limits.from_resources(config.resources)
    env.update(
        PYTHONPATH=python_path(verified.root),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONNOUSERSITE="1",
        PYTHONSAFEPATH="1",
        OMP_NUM_THREADS=str(config.resources.threads),
        # Bounded malloc arenas keep reserved address space near what is used,
        # so the RLIMIT_AS backstop of libos.limits does not bite on reservations.
        MALLOC_ARENA_MAX=str(limits.malloc_arena_max(budget)),
    )
    # The platform location is host configuration, not input to the enclave.
    env[PLATFORM_DIR_ENV] = str(platform_dir(verified.instance_dir).resolve())
    cmd = [*interpreter_command(ENCLAVE_MODULE), str(verified.instance_dir)]
    return [*cmd, "--", *argv], env


def run(instance_dir: Path, argv: Sequence[str]) -> int:
    """Verify the image, run its entry point with ``argv`` in a fresh interpreter, return its code.

    SIGINT and SIGTERM sent to this process are passed on to the enclave process.
    """
    cmd, env = command(instance_dir, argv)
    proc = subprocess.Popen(cmd, env=env)
    previous: dict[signal.Signals, signal._HANDLER] = {}

    def forward(signum: int, _frame: FrameType | None) -> None:
        proc.send_signal(signum)

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, forward)
    except ValueError:
        pass  # not the main thread: no handlers, the caller manages signals
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass(frozen=True)
class StartupReport:
    """What starting the enclave costs: measured by running it up to the entry point."""

    peak_rss_bytes: int  # VmHWM after importing the entry point's module
    enter_seconds: float  # verification, runtime, finder (enclave_start.enter)
    import_seconds: float  # importing the entry point's module, verified
    wall_seconds: float  # the whole process, as the host saw it
    modules: int  # modules loaded


def startup_probe(
    instance_dir: Path, modules: Sequence[str] = (), timeout: float = 300
) -> StartupReport:
    """Start the enclave as ``run`` does, import the entry point's module, report, stop.

    The entry function is not called; ``modules`` are imported too (verified,
    like everything). ``detente libos build`` prints this so an operator can
    size ``memory_mb`` from a measured figure.
    """
    cmd, env = command(instance_dir, modules)
    cmd[cmd.index("--")] = STARTUP_PROBE
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise IntegrityError(
            f"the enclave did not start (exit {done.returncode}): "
            f"{done.stderr.strip()[-2000:] or 'no message'}"
        )
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    return StartupReport(
        peak_rss_bytes=int(doc["peak_rss_bytes"]),
        enter_seconds=float(doc["enter_seconds"]),
        import_seconds=float(doc["import_seconds"]),
        wall_seconds=wall,
        modules=int(doc["modules"]),
    )
