"""The enclave's logs are host files: exception texts that may quote data never reach them.

Under real SGX, as in simulation, whatever an enclave process writes to its
log files or its stderr lands in plain files the host reads. Code in the
enclave names data sets and columns in its own messages (DetenteError), never
values; but the texts of other libraries' exceptions — numpy's ``could not
convert string to float: '…'``, Arrow's ``invalid value '…'`` — quote the data
that caused them. So every traceback the enclave writes keeps its frames
(file, line, function: code, not data) and the exception's type, and the
message only of a :class:`~protocols.errors.DetenteError`.

:func:`configure` sets up logging this way (the worker and every child
process use it instead of ``logging.basicConfig``); :func:`install_hooks`
makes uncaught exceptions of the main thread and of other threads print the
same way. Both are called for every enclave process by libos.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from protocols.errors import DetenteError

WITHHELD = "message withheld: it may quote data"


def _headline(exc: BaseException) -> str:
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    if isinstance(exc, DetenteError):
        return f"{name}: {exc}"
    return f"{name} ({WITHHELD})"


def describe_exception(exc: BaseException) -> str:
    """A traceback of ``exc`` and its causes, with only DetenteError messages in it."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    chain: list[BaseException] = []
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    for n, each in enumerate(reversed(chain)):
        if n:
            parts.append("\nwhich then caused or led to:\n")
        parts.append("Traceback (most recent call last):\n")
        for frame in traceback.extract_tb(each.__traceback__):
            parts.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}\n')
            if frame.line:
                parts.append(f"    {frame.line.strip()}\n")
        parts.append(_headline(each) + "\n")
    return "".join(parts)


class WithholdingFormatter(logging.Formatter):
    """A logging formatter whose tracebacks come from :func:`describe_exception`."""

    def formatException(self, ei: Any) -> str:
        _, value, _ = ei
        if value is None:
            return ""
        return describe_exception(value).rstrip("\n")


def configure(
    fmt: str,
    *,
    stream: TextIO | None = None,
    filename: Path | None = None,
    level: int = logging.INFO,
) -> None:
    """Log to ``stream`` or ``filename`` with tracebacks that withhold foreign messages."""
    handler: logging.Handler
    if filename is not None:
        handler = logging.FileHandler(filename, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(WithholdingFormatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def _print_uncaught(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    if value.__traceback__ is None:
        value = value.with_traceback(tb)
    sys.stderr.write(describe_exception(value))
    sys.stderr.flush()


def _print_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or isinstance(args.exc_value, SystemExit):
        return
    sys.stderr.write(f"uncaught exception in thread {args.thread.name if args.thread else '?'}:\n")
    _print_uncaught(args.exc_type, args.exc_value, args.exc_traceback)


def install_hooks() -> None:
    """Uncaught exceptions (main thread and others) print through :func:`describe_exception`."""
    sys.excepthook = _print_uncaught
    threading.excepthook = _print_uncaught_in_thread
