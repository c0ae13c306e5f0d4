"""The child's side: start as an enclave process, prove the measurement, run the target.

How a child starts. It is a fresh interpreter started the way the launcher
starts the enclave (libos.launcher): ``python -B -P -S -m libos.process DIR RFD
WFD TARGET`` with the image root as the only ``PYTHONPATH`` entry, which calls
``libos.enclave_start.enter(DIR)`` — image verification, verified imports, the
runtime from the same verified image and platform — before it imports the
target through the verifying finder.

A child whose parent goes away (its inbound pipe reaches end of file) exits at
once, so no job outlives its worker. The child's stdout and stderr (and Python
logging) go to ``logs/<name>.log`` under the instance; like every log, they
must carry ids and stages only.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import queue
import resource
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from libos import logs
from libos.process.framing import (
    DONE,
    ERROR,
    EXIT_ORPHANED,
    EXIT_REFUSED,
    HELLO,
    PAYLOAD,
    RESERVED,
    FrameReader,
    Message,
    write_frame,
)
from protocols.errors import DetenteError, FormatError

log = logging.getLogger("libos.process")


def _peak_rss_of_self() -> int:
    # ru_maxrss is in KiB on Linux (getrusage(2)).
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class Channel:
    """The child's end: messages to and from the parent.

    A thread drains the inbound pipe into a queue, so the parent never blocks
    on a full pipe, and ends the process when the parent goes away.
    """

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._write_fd = write_fd
        self._lock = threading.Lock()
        self._inbox: queue.Queue[Message] = queue.Queue()
        self._reader = FrameReader(read_fd, "parent process")
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
        if kind.startswith(RESERVED):
            raise FormatError(f"message kinds starting with {RESERVED!r} are reserved to libos")
        self._send(kind, body)

    def _send(self, kind: str, body: bytes) -> None:
        with self._lock:
            write_frame(self._write_fd, kind, body)

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


def child_main(argv: list[str]) -> int:
    """Run a child: ``argv`` is DIR READ_FD WRITE_FD TARGET; return the process's exit code."""
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
    # The log is a host file: tracebacks in it withhold foreign exception texts.
    logs.configure(
        f"%(asctime)s %(levelname)s [pid {os.getpid()}] %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        verified = enclave_start.enter(instance_dir.resolve())
    except DetenteError as exc:
        print(f"detente libos: refusing to run child: {exc}", file=sys.stderr, flush=True)
        _finish(channel, ERROR, _report(exc))
        return EXIT_REFUSED
    channel._send(HELLO, bytes.fromhex(verified.measurement.mrenclave))
    first = channel._reader.read()
    if first is None or first.kind != PAYLOAD:
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
            sys.stderr.write(logs.describe_exception(exc))
        return _finish(channel, ERROR, _report(exc)) or 1
    return _finish(channel, DONE, json.dumps({"peak_rss_bytes": _peak_rss_of_self()}).encode())


def exit_now(code: int) -> None:
    """Flush logs and leave without interpreter teardown (threads of the target may linger)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
