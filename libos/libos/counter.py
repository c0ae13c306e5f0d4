"""Monotonic counters of the platform: what makes a rollback of sealed state detectable.

Sealing and the encrypted file system make host files confidential and
authentic, but an authentic *old* copy is still authentic: a host that keeps
yesterday's files can put them back. Hardware closes that gap with a counter
the host cannot move backwards: SGX Platform Services monotonic counters
(``sgx_create_monotonic_counter`` / ``sgx_increment_monotonic_counter``, kept
by the Management Engine; deprecated with the PSE on newer platforms) or a TPM
2.0 NV counter index (``TPMA_NV_COUNTER``, ``TPM2_NV_Increment``). A counter
only goes up, survives restarts, and is read back by the enclave to check that
the state it loads is the newest it ever committed.

:class:`SimCounter` is the SIMULATION of such a counter: one small file per
counter under ``<platform dir>/counters/``, written atomically (temp file,
fsync, rename, fsync of the directory) and incremented under an exclusive
lock. Like every other part of the SIMULATION platform it gives NO hardware
protection: whoever controls the host can rewrite the file. It exists so the
code paths that use a real counter run and are tested here.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from protocols.durable import write_atomic
from protocols.errors import IntegrityError

COUNTERS_DIR = "counters"
# The file states what it is, so nobody mistakes it for a hardware counter.
_HEADER = "detente SIMULATION monotonic counter (no hardware protection) v1\n"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_MAX_VALUE = (1 << 63) - 1


class MonotonicCounter(Protocol):
    """A platform counter that only goes up and survives restarts."""

    @property
    def name(self) -> str: ...

    def read(self) -> int | None:
        """The current value, or None if the counter was never created."""
        ...

    def create(self) -> int:
        """Create the counter at 0 if it does not exist; return its value."""
        ...

    def increment(self) -> int:
        """Add one and return the new value (the counter must exist)."""
        ...


class SimCounter:
    """A SIMULATION monotonic counter: the file ``<directory>/<name>``. NO hardware protection."""

    def __init__(self, directory: Path, name: str) -> None:
        if not _NAME.fullmatch(name):
            raise IntegrityError(
                f"monotonic counter name {name!r} is not valid: use letters, digits, '.', '_', '-'"
            )
        self.directory = Path(directory)
        self._name = name
        self.path = self.directory / name

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"<SimCounter SIMULATION {self.path}>"

    def read(self) -> int | None:
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise IntegrityError(
                f"SIMULATION monotonic counter {self.path} cannot be read ({exc}); "
                "the platform directory was altered"
            ) from None
        header, _, value = text.partition("\n")
        if header + "\n" != _HEADER or not re.fullmatch(r"(0|[1-9][0-9]{0,18})\n", value):
            raise IntegrityError(
                f"SIMULATION monotonic counter {self.path} is not a counter file; "
                "the platform directory was altered"
            )
        number = int(value)
        if number > _MAX_VALUE:
            raise IntegrityError(f"SIMULATION monotonic counter {self.path} is out of range")
        return number

    def create(self) -> int:
        with self._locked():
            current = self.read()
            if current is None:
                self._write(0)
                return 0
            return current

    def increment(self) -> int:
        with self._locked():
            current = self.read()
            if current is None:
                raise IntegrityError(
                    f"SIMULATION monotonic counter {self.path} does not exist: it was deleted "
                    "from the platform directory, so the state it protects cannot be trusted"
                )
            if current >= _MAX_VALUE:
                raise IntegrityError(f"SIMULATION monotonic counter {self.path} is exhausted")
            self._write(current + 1)
            return current + 1

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # The lock file serialises read-modify-write across processes; the
        # counter file itself is only ever replaced whole, never locked.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / f".{self._name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, value: int) -> None:
        write_atomic(self.path, f"{_HEADER}{value}\n".encode("ascii"), mode=0o600)


def sim_counter(platform_dir: Path, name: str) -> SimCounter:
    """The SIMULATION counter ``name`` of the platform stored in ``platform_dir``."""
    return SimCounter(Path(platform_dir) / COUNTERS_DIR, name)
