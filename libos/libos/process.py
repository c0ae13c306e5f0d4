"""Child processes inside the enclave's trust domain (one per job), with crash isolation.

Code running in an enclave does::

    from libos import process

    with process.spawn("enclave_worker.job_process:job_main", payload, name="job-42") as child:
        child.send("chunk", data)              # any kind not starting with "libos/"
        for message in child.messages():       # until the child's target returns
            ...                                # message.kind, message.body
    # a crash raises ChildCrashedError, an exception in the target ChildFailedError
    # (or the child's own DetenteError subclass with its message, else ChildRefusedError)

and the child runs ``job_main(channel, payload)``, talking back with
``channel.send(kind, body)`` and ``channel.recv()``.

How a child starts. It is a fresh interpreter started the way the launcher
starts the enclave (libos.launcher): ``python -B -P -m libos.process DIR RFD WFD
TARGET`` with the image root as the only ``PYTHONPATH`` entry, which calls
``libos.enclave_start.enter(DIR)`` — image verification, verified imports, the
runtime from the same verified image and platform — before it imports the
target through the verifying finder.

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
process is not affected. A child whose parent goes away (its inbound pipe
reaches end of file) exits at once, so no job outlives its worker. The
child's stdout and stderr (and Python logging) go to ``logs/<name>.log``
under the instance; like every log, they must carry ids and stages only.

The pipe protocol (both directions): frames of ``kind length (1 byte) ‖ body
length (4 bytes, big endian) ‖ kind (ASCII) ‖ body``. Kinds starting with
``libos/`` are this module's: ``libos/hello`` (child → parent: its 32-byte
MRENCLAVE), ``libos/payload`` (parent → child), ``libos/done`` (child →
parent: JSON with its peak RSS) and ``libos/error`` (child → parent: JSON
naming the exception). The two sides speak in turns; a side that sends a lot
while the other sends too must read in between (the child drains its inbound
pipe on a thread, so the parent never blocks on it).
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import queue
import re
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from protocols.errors import DetenteError, FormatError, IntegrityError

log = logging.getLogger("libos.process")

_HEADER = struct.Struct(">BI")
# A bound on one frame, so a corrupt length cannot make a side allocate gigabytes.
MAX_BODY = 64 << 20
_RESERVED = "libos/"
_HELLO = "libos/hello"
_PAYLOAD = "libos/payload"
_DONE = "libos/done"
_ERROR = "libos/error"
_TARGET = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")
# Exit codes of the child bootstrap (sysexits.h): refused to start, parent gone.
EXIT_REFUSED = 70
EXIT_ORPHANED = 75
DEFAULT_START_TIMEOUT = 120.0
_STOP_GRACE = 5.0


class ChildError(DetenteError):
    """A child process did not complete its target."""


class ChildCrashedError(ChildError):
    """The child process ended without finishing: killed, crashed, or exited on its own."""

    def __init__(self, message: str, ended: ChildExit | None = None) -> None:
        super().__init__(message)
        self.ended = ended


class ChildFailedError(ChildError):
    """The child's target raised an exception that is not a DetenteError (details in its log)."""


class ChildRefusedError(DetenteError):
    """The child's target raised a DetenteError this process cannot rebuild; its message is kept.

    Not a ChildError: the child ended as designed, refusing its input.
    """

    def __init__(self, message: str, type_name: str) -> None:
        super().__init__(message)
        self.type_name = type_name


class ChildLimitError(ChildError):
    """As many child processes as the config allows are already running."""


# Children started and not yet reaped, against [resources] processes (libos.limits).
_live = [0]
_live_lock = threading.Lock()


@dataclass(frozen=True)
class Message:
    """One frame of the pipe protocol."""

    kind: str
    body: bytes


@dataclass(frozen=True)
class ChildExit:
    """How a child process ended. ``exit_code`` is negative for a signal, as in subprocess."""

    pid: int
    exit_code: int
    peak_rss_bytes: int

    @property
    def signal_name(self) -> str | None:
        if self.exit_code >= 0:
            return None
        try:
            return signal.Signals(-self.exit_code).name
        except ValueError:
            return f"signal {-self.exit_code}"

    def describe(self) -> str:
        """``exit code -9 (killed by SIGKILL)``, ``exit code 3``."""
        text = f"exit code {self.exit_code}"
        name = self.signal_name
        if name is not None:
            text += f" (killed by {name})"
        elif self.exit_code == EXIT_ORPHANED:
            text += " (its parent went away)"
        return text


# --- framing -------------------------------------------------------------------


def _check_kind(kind: str) -> bytes:
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise FormatError(f"message kind {kind!r} must be 1-64 of [A-Za-z0-9._/-]")
    return kind.encode("ascii")


def _write_frame(fd: int, kind: str, body: bytes) -> None:
    name = _check_kind(kind)
    if len(body) > MAX_BODY:
        raise FormatError(f"a {kind!r} message of {len(body)} bytes exceeds {MAX_BODY} bytes")
    data = memoryview(_HEADER.pack(len(name), len(body)) + name + bytes(body))
    while data:
        written = os.write(fd, data)
        data = data[written:]


class _FrameReader:
    """Reads frames from a pipe; ``None`` at a clean end of file between frames."""

    def __init__(self, fd: int, peer: str) -> None:
        self._fd = fd
        self._peer = peer
        self._buffer = bytearray()
        self._eof = False

    def _fill(self, size: int, deadline: float | None) -> bool:
        while len(self._buffer) < size:
            if self._eof:
                return False
            if deadline is not None:
                poller = select.poll()
                poller.register(self._fd, select.POLLIN)
                remaining_ms = max(int((deadline - time.monotonic()) * 1000), 0)
                if not poller.poll(remaining_ms):
                    raise TimeoutError(f"no message from the {self._peer} in time")
            chunk = os.read(self._fd, max(1 << 16, size - len(self._buffer)))
            if not chunk:
                self._eof = True
                return False
            self._buffer += chunk
        return True

    def read(self, timeout: float | None = None) -> Message | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._fill(_HEADER.size, deadline):
            if self._buffer:
                raise FormatError(f"the {self._peer} sent a truncated frame header")
            return None
        kind_size, body_size = _HEADER.unpack_from(self._buffer)
        if body_size > MAX_BODY:
            raise FormatError(f"the {self._peer} announced a frame of {body_size} bytes")
        total = _HEADER.size + kind_size + body_size
        if not self._fill(total, deadline):
            raise FormatError(f"the {self._peer} sent a truncated frame")
        kind = bytes(self._buffer[_HEADER.size : _HEADER.size + kind_size]).decode(
            "ascii", "replace"
        )
        body = bytes(self._buffer[_HEADER.size + kind_size : total])
        del self._buffer[:total]
        return Message(kind, body)


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


def _peak_rss_of_self() -> int:
    # ru_maxrss is in KiB on Linux (getrusage(2)).
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# --- the parent's side -----------------------------------------------------------


class ChildHandle:
    """The parent's end of one child process. Made by :func:`spawn`."""

    def __init__(
        self, popen: subprocess.Popen[bytes], to_child: int, from_child: int, name: str, log: Path
    ) -> None:
        self._popen = popen
        self._to_child = to_child
        self._reader = _FrameReader(from_child, f"child process {name!r}")
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
        if kind.startswith(_RESERVED):
            raise FormatError(f"message kinds starting with {_RESERVED!r} are reserved to libos")
        self._send(kind, body)

    def _send(self, kind: str, body: bytes) -> None:
        self._check_open()
        try:
            _write_frame(self._to_child, kind, body)
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
        if message.kind == _DONE:
            self._finished = True
            self.wait(_STOP_GRACE)
            return None
        if message.kind == _ERROR:
            self._finished = True
            self.wait(_STOP_GRACE)
            raise self._failure(message.body)
        if message.kind == _HELLO and not self._started:
            self._started = True
            return message
        if message.kind.startswith(_RESERVED) or not self._started:
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
        if hello is None or hello.kind != _HELLO:
            raise FormatError(f"child process {name!r} did not start with {_HELLO!r}")
        if hello.body != rt.mrenclave:
            raise IntegrityError(
                f"child process {name!r} runs image MRENCLAVE {hello.body.hex()[:16]}…, not this "
                f"enclave's {rt.mrenclave.hex()[:16]}…: the image changed on disk since the "
                "enclave started; restart it with `detente libos run DIR`"
            )
        handle._send(_PAYLOAD, payload)
    except BaseException:
        handle.kill()
        handle.close()
        raise
    log.info("child process %s (pid %d) runs %s", name, handle.pid, target)
    return handle


# --- the child's side ------------------------------------------------------------


class Channel:
    """The child's end: messages to and from the parent.

    A thread drains the inbound pipe into a queue, so the parent never blocks
    on a full pipe, and ends the process when the parent goes away.
    """

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._write_fd = write_fd
        self._lock = threading.Lock()
        self._inbox: queue.Queue[Message] = queue.Queue()
        self._reader = _FrameReader(read_fd, "parent process")
        self._thread: threading.Thread | None = None

    def __reduce__(self) -> Any:
        raise TypeError("a Channel owns pipes; it cannot be pickled")

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._drain, name="libos-channel", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        try:
            while (message := self._reader.read()) is not None:
                self._inbox.put(message)
        except (FormatError, OSError) as exc:
            print(f"detente libos: bad input from the parent: {exc}", file=sys.stderr, flush=True)
        # End of file: the parent closed its handle or died. No child outlives it.
        print("detente libos: parent process gone, child exits", file=sys.stderr, flush=True)
        os._exit(EXIT_ORPHANED)

    def send(self, kind: str, body: bytes = b"") -> None:
        if kind.startswith(_RESERVED):
            raise FormatError(f"message kinds starting with {_RESERVED!r} are reserved to libos")
        self._send(kind, body)

    def _send(self, kind: str, body: bytes) -> None:
        with self._lock:
            _write_frame(self._write_fd, kind, body)

    def recv(self, timeout: float | None = None) -> Message:
        """The next message from the parent; TimeoutError after ``timeout`` seconds."""
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("no message from the parent process in time") from None


def _report(exc: BaseException) -> bytes:
    cls = type(exc)
    return json.dumps(
        {
            "type": f"{cls.__module__}.{cls.__qualname__}",
            "detente": isinstance(exc, DetenteError),
            # Only a DetenteError's message is meant for users; others stay in the log.
            "message": str(exc) if isinstance(exc, DetenteError) else "",
        }
    ).encode()


def _finish(channel: Channel, kind: str, body: bytes) -> int:
    try:
        channel._send(kind, body)
    except OSError:
        return EXIT_ORPHANED
    return 0


def _child_main(argv: list[str]) -> int:
    import importlib

    from libos import enclave_start

    instance_dir, read_fd, write_fd, target = Path(argv[0]), int(argv[1]), int(argv[2]), argv[3]
    # Inherited for this process only: grandchildren (OpenMP helpers, anything the
    # target starts) must not hold the pipes, or the parent would miss our end.
    os.set_inheritable(read_fd, False)
    os.set_inheritable(write_fd, False)
    channel = Channel(read_fd, write_fd)
    # A segfault prints the Python stack of every thread to the child's log.
    faulthandler.enable(file=sys.stderr, all_threads=True)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [pid {os.getpid()}] %(name)s: %(message)s",
    )
    try:
        verified = enclave_start.enter(instance_dir.resolve())
    except DetenteError as exc:
        print(f"detente libos: refusing to run child: {exc}", file=sys.stderr, flush=True)
        _finish(channel, _ERROR, _report(exc))
        return EXIT_REFUSED
    channel._send(_HELLO, verified.measurement.mrenclave)
    first = channel._reader.read()
    if first is None or first.kind != _PAYLOAD:
        print("detente libos: the parent sent no payload", file=sys.stderr, flush=True)
        return EXIT_ORPHANED
    channel._start()
    module_name, _, function_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        function: Callable[[Channel, bytes], object] | None = getattr(module, function_name, None)
        if not callable(function):
            raise FormatError(f"child target {target!r}: {function_name!r} is not a function")
        function(channel, first.body)
    except Exception as exc:  # reported to the parent; the traceback goes to the log
        # MemoryError is an Exception too: a child that ran out of memory reports it.
        if isinstance(exc, DetenteError):
            log.warning("child target failed: %s", exc)
        else:
            traceback.print_exc(file=sys.stderr)
        return _finish(channel, _ERROR, _report(exc)) or 1
    return _finish(channel, _DONE, json.dumps({"peak_rss_bytes": _peak_rss_of_self()}).encode())


def _exit_now(code: int) -> None:
    """Flush logs and leave without interpreter teardown (threads of the target may linger)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        print(
            "usage: python -m libos.process DIR READ_FD WRITE_FD module:function", file=sys.stderr
        )
        sys.exit(2)
    from libos.process import _child_main as _main
    from libos.process import _exit_now as _leave

    _leave(_main(sys.argv[1:]))
