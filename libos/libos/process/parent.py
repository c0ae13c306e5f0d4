"""The parent's side of a child process: start it, check its measurement, talk to it, reap it.

Why no re-attestation. The child is the same measured code as its parent:
its first message is its MRENCLAVE, and the parent refuses to go on (and
kills it) unless that equals its own. Only then does it send the payload,
which carries whatever secrets the child needs (the worker sends its identity
keys). The payload and every later message travel over two anonymous pipes
inherited by the child (``pass_fds``): never through files, argv or the
environment. On the ``sim`` backend this is a SIMULATION: the host can read
pipes and process memory as it can read everything else there. Under Gramine
a child is a new enclave of the same manifest; Gramine checks it by local
attestation and encrypts the pipes between the two enclaves, which is what
makes the MRENCLAVE check above hold on hardware.

Crash isolation. A child that is killed, segfaults, calls ``os._exit``, runs
out of memory or raises is reported to the parent as an exception; the parent
process is not affected. At most ``[resources] processes`` children of one
enclave process run at once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from libos.process.framing import (
    DONE,
    ERROR,
    HELLO,
    PAYLOAD,
    RESERVED,
    ChildCrashedError,
    ChildError,
    ChildExit,
    ChildFailedError,
    ChildLimitError,
    ChildRefusedError,
    FrameReader,
    Message,
    write_frame,
)
from protocols.errors import DetenteError, FormatError, IntegrityError

log = logging.getLogger("libos.process")

_TARGET = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DEFAULT_START_TIMEOUT = 120.0
_STOP_GRACE = 5.0

# Children started and not yet reaped, against [resources] processes (libos.limits).
_live = [0]
_live_lock = threading.Lock()


def _error_class(qualified: str) -> type[DetenteError] | None:
    """A DetenteError subclass already loaded in this process, by ``module.QualName``.

    Only classes already imported are considered: a child's message never makes
    the parent import anything.
    """
    pending: list[type[DetenteError]] = [DetenteError]
    while pending:
        cls = pending.pop()
        if f"{cls.__module__}.{cls.__qualname__}" == qualified:
            return cls
        pending.extend(cls.__subclasses__())
    return None


# --- the parent's side -----------------------------------------------------------


class ChildHandle:
    """The parent's end of one child process. Made by :func:`spawn`."""

    def __init__(
        self, popen: subprocess.Popen[bytes], to_child: int, from_child: int, name: str, log: Path
    ) -> None:
        self._popen = popen
        self._to_child = to_child
        self._reader = FrameReader(from_child, f"child process {name!r}")
        self._from_child = from_child
        self.name = name
        self.log_path = log
        self._ended: ChildExit | None = None
        self._finished = False
        self._started = False  # the child's hello came
        self._killed_by_parent = False
        self._closed = False
        self._reap_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ChildHandle {self.name!r} pid={self.pid}>"

    def __reduce__(self) -> Any:
        raise TypeError("a ChildHandle owns a process and pipes; it cannot be pickled")

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def ended(self) -> ChildExit | None:
        """How the child ended, once it has (None while it runs)."""
        return self._ended

    def send(self, kind: str, body: bytes = b"") -> None:
        """Send one message to the child; raise the child's failure if it has ended."""
        if kind.startswith(RESERVED):
            raise FormatError(f"message kinds starting with {RESERVED!r} are reserved to libos")
        self._send(kind, body)

    def _send(self, kind: str, body: bytes) -> None:
        self._check_open()
        try:
            write_frame(self._to_child, kind, body)
        except (BrokenPipeError, OSError):
            # The child is gone: its own last words say why.
            self._drain_for_failure()

    def _drain_for_failure(self) -> None:
        while True:
            message = self._read(None)
            if message is None:
                raise ChildError(f"child process {self.name!r} ended without a result")

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next message from the child, or None once its target returned.

        Raises ChildCrashedError if the child ended without finishing,
        ChildFailedError or the child's DetenteError if its target raised, and
        TimeoutError if ``timeout`` seconds pass without a message.
        """
        if self._finished:
            return None
        return self._read(timeout)

    def messages(self) -> Iterator[Message]:
        """Every message until the child's target returns."""
        while (message := self.recv()) is not None:
            yield message

    def _check_open(self) -> None:
        # The pipes' descriptor numbers may belong to other files once closed.
        if self._closed:
            raise ChildError(f"the handle of child process {self.name!r} is closed")

    def _read(self, timeout: float | None) -> Message | None:
        self._check_open()
        try:
            message = self._reader.read(timeout)
        except FormatError:
            self.kill()
            raise
        if message is None:
            ended = self.wait(_STOP_GRACE)
            why = "was stopped by its parent" if self._killed_by_parent else "crashed"
            raise ChildCrashedError(
                f"child process {self.name!r} (pid {self.pid}) {why}: {ended.describe()}; "
                f"peak memory {ended.peak_rss_bytes / 2**20:.1f} MiB; see {self.log_path}",
                ended,
            )
        if message.kind == DONE:
            self._finished = True
            self.wait(_STOP_GRACE)
            return None
        if message.kind == ERROR:
            self._finished = True
            self.wait(_STOP_GRACE)
            raise self._failure(message.body)
        if message.kind == HELLO and not self._started:
            self._started = True
            return message
        if message.kind.startswith(RESERVED) or not self._started:
            self.kill()
            raise FormatError(f"child process {self.name!r} sent an unexpected {message.kind!r}")
        return message

    def _failure(self, body: bytes) -> DetenteError:
        try:
            report = json.loads(body)
            qualified, text = str(report["type"]), str(report["message"])
        except (ValueError, KeyError, TypeError):
            return ChildFailedError(f"child process {self.name!r} failed with an unreadable report")
        if report.get("detente"):
            # The same class with the same (user-facing) message, when this
            # process knows it and can make one from a message alone; otherwise
            # (libos.limits.MemoryLimitError takes its figures too) the message
            # in a ChildRefusedError naming the class.
            cls = _error_class(qualified)
            if cls is not None:
                try:
                    return cls(text)
                except TypeError:
                    pass
            return ChildRefusedError(text, qualified)
        if qualified == "builtins.MemoryError":
            return ChildFailedError(
                f"child process {self.name!r} ran out of memory (MemoryError); see {self.log_path}"
            )
        # Not a DetenteError: its message may hold internals, which stay in the log.
        return ChildFailedError(
            f"child process {self.name!r} failed with {qualified}; see {self.log_path}"
        )

    def wait(self, timeout: float | None = None) -> ChildExit:
        """Reap the child (SIGKILL after ``timeout`` seconds) and return how it ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._reap_lock:
                if self._ended is not None:
                    return self._ended
                # wait4 rather than Popen.wait: it also gives the child's peak RSS.
                # WNOHANG under a short lock, so kill() from another thread never
                # waits for the child and never signals a reaped (reusable) pid.
                pid, status, usage = os.wait4(self.pid, os.WNOHANG)
                if pid == self.pid:
                    code = os.waitstatus_to_exitcode(status)
                    self._popen.returncode = code  # reaped here: Popen must not wait again
                    with _live_lock:
                        _live[0] -= 1
                    self._ended = ChildExit(self.pid, code, int(usage.ru_maxrss) * 1024)
                    return self._ended
            if deadline is not None and time.monotonic() >= deadline:
                self.kill()
                deadline = None
            time.sleep(0.005)

    def kill(self) -> None:
        """Stop the child now (SIGKILL). Safe from any thread, any number of times."""
        with self._reap_lock:
            if self._ended is None:
                self._killed_by_parent = True
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> ChildExit:
        """Close the pipes (a child still running exits: its parent is gone) and reap it."""
        if not self._closed:
            self._closed = True
            os.close(self._to_child)
            os.close(self._from_child)
        if self._ended is None and not self._finished:
            self._killed_by_parent = True
        return self.wait(_STOP_GRACE)

    def __enter__(self) -> ChildHandle:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _log_file(log_dir: Path, name: str) -> int:
    log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return os.open(log_dir / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def spawn(
    target: str,
    payload: bytes,
    *,
    name: str = "child",
    start_timeout: float = DEFAULT_START_TIMEOUT,
) -> ChildHandle:
    """Start ``target`` ("package.module:function") in a child process of this enclave.

    Returns once the child has proved it runs this enclave's measurement and
    has received ``payload``. The target is called as ``function(channel,
    payload)``. ``name`` names the log file (``logs/<name>.log``).
    """
    from libos import launcher, limits, runtime

    rt = runtime.current()
    if not isinstance(target, str) or not _TARGET.fullmatch(target):
        raise FormatError(f"child target {target!r} must be 'package.module:function'")
    if not _NAME.fullmatch(name):
        raise FormatError(f"child name {name!r} must be 1-128 of [A-Za-z0-9._-]")
    budget = limits.current()
    with _live_lock:
        if budget is not None and _live[0] >= budget.processes:
            raise ChildLimitError(
                f"cannot start child process {name!r}: {_live[0]} of the enclave's "
                f"{budget.processes} child processes ([resources] processes in libos.toml) "
                "are running; wait for one to finish, or raise the limit and rebuild"
            )
        _live[0] += 1
    instance_dir = rt.instance_dir.resolve()
    root = instance_dir / "image" / "root"
    # The enclave's environment is the one the launcher made (libos.launcher.command);
    # the import settings are restated so the child can only start from the image.
    env = dict(os.environ)
    env.update(
        PYTHONPATH=launcher.python_path(root),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONNOUSERSITE="1",
        PYTHONSAFEPATH="1",
    )
    child_read, to_child = os.pipe()
    from_child, child_write = os.pipe()
    log_fd = _log_file(Path(rt.log_dir), name)
    try:
        popen = subprocess.Popen(
            [
                *launcher.interpreter_command("libos.process"),
                str(instance_dir),
                str(child_read),
                str(child_write),
                target,
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            pass_fds=(child_read, child_write),
            close_fds=True,
        )
    except BaseException:
        for fd in (child_read, to_child, from_child, child_write):
            os.close(fd)
        with _live_lock:
            _live[0] -= 1
        raise
    finally:
        os.close(log_fd)
    os.close(child_read)
    os.close(child_write)
    handle = ChildHandle(popen, to_child, from_child, name, Path(rt.log_dir) / f"{name}.log")
    try:
        try:
            hello = handle._read(start_timeout)
        except TimeoutError:
            handle.kill()
            raise ChildError(
                f"child process {name!r} did not start within {start_timeout:.0f} s"
            ) from None
        if hello is None or hello.kind != HELLO:
            raise FormatError(f"child process {name!r} did not start with {HELLO!r}")
        if hello.body.hex() != rt.mrenclave:
            raise IntegrityError(
                f"child process {name!r} runs image MRENCLAVE {hello.body.hex()[:16]}…, not this "
                f"enclave's {rt.mrenclave[:16]}…: the image changed on disk since the "
                "enclave started; restart it with `detente libos run DIR`"
            )
        handle._send(PAYLOAD, payload)
    except BaseException:
        handle.kill()
        handle.close()
        raise
    log.info("child process %s (pid %d) runs %s", name, handle.pid, target)
    return handle
