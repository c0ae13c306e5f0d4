"""The pipe protocol between a parent and its child process, and the errors both sides raise.

Frames (both directions): ``kind length (1 byte) ‖ body length (4 bytes, big
endian) ‖ kind (ASCII) ‖ body``. Kinds starting with ``libos/`` are libos's:
``libos/hello`` (child → parent: the 32 raw bytes of its MRENCLAVE), ``libos/payload``
(parent → child), ``libos/done`` (child → parent: JSON with its peak RSS) and
``libos/error`` (child → parent: JSON naming the exception). The two sides
speak in turns; a side that sends a lot while the other sends too must read in
between (the child drains its inbound pipe on a thread, so the parent never
blocks on it).
"""

from __future__ import annotations

import os
import re
import select
import signal
import struct
import time
from dataclasses import dataclass

from protocols.errors import DetenteError, FormatError

_HEADER = struct.Struct(">BI")
# A bound on one frame, so a corrupt length cannot make a side allocate gigabytes.
MAX_BODY = 64 << 20
RESERVED = "libos/"
HELLO = "libos/hello"
PAYLOAD = "libos/payload"
DONE = "libos/done"
ERROR = "libos/error"
_KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")
# Exit codes of the child bootstrap (sysexits.h): refused to start, parent gone.
EXIT_REFUSED = 70
EXIT_ORPHANED = 75


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


def write_frame(fd: int, kind: str, body: bytes) -> None:
    name = _check_kind(kind)
    if len(body) > MAX_BODY:
        raise FormatError(f"a {kind!r} message of {len(body)} bytes exceeds {MAX_BODY} bytes")
    data = memoryview(_HEADER.pack(len(name), len(body)) + name + bytes(body))
    while data:
        written = os.write(fd, data)
        data = data[written:]


class FrameReader:
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
