"""Upload and query progress as the CLI shows it: one line redrawn on a terminal, plain lines
when piped."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from party_client.datasets import SEALING, UploadProgress
from party_client.queries import ANSWERED, QueryProgress
from party_client.queries import SEALING as QUERY_SEALING

# Piped output gets a line at most this often, and the last line of each phase.
PLAIN_INTERVAL = 2.0


def _mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def describe(p: UploadProgress) -> str:
    """One line saying how far an upload is."""
    if p.phase == SEALING:
        return f"checked and sealed {p.rows:,} rows ({_mb(p.bytes)} of ciphertext)"
    share = f" ({100 * p.bytes / p.total_bytes:.0f}%)" if p.total_bytes else ""
    return (
        f"sent {p.rows:,} of {p.total_rows or 0:,} rows, {_mb(p.bytes)} of "
        f"{_mb(p.total_bytes or 0)}{share}"
    )


def describe_query(p: QueryProgress) -> str:
    """One line saying how far a query is."""
    if p.phase == QUERY_SEALING:
        return f"checked and sealed {p.rows:,} rows ({_mb(p.bytes)} of ciphertext)"
    if p.phase == ANSWERED:
        return f"answered {p.rows:,} rows (verified: signed by the attested enclave)"
    share = f" ({100 * p.bytes / p.total_bytes:.0f}%)" if p.total_bytes else ""
    return f"sent {p.rows:,} rows, {_mb(p.bytes)} of {_mb(p.total_bytes or 0)}{share}"


class UploadReport:
    """A progress callback for :func:`party_client.upload` (or, with ``describe`` =
    :func:`describe_query`, :func:`party_client.predict`) writing to ``console``."""

    def __init__(self, console: Console, describe: Callable[[Any], str] = describe) -> None:
        self._describe = describe
        self._console = console
        self._terminal = console.is_terminal
        self._last: Any = None  # the latest report
        self._printed: Any = None  # the latest one printed (piped)
        self._printed_at = 0.0
        self._width = 0

    def __call__(self, progress: Any) -> None:
        previous, self._last = self._last, progress
        if self._terminal:
            line = self._describe(progress)
            self._console.file.write("\r" + line.ljust(self._width))
            self._console.file.flush()
            self._width = len(line)
            return
        new_phase = previous is not None and previous.phase != progress.phase
        if new_phase and previous is not None and previous is not self._printed:
            self._print(previous)
        if new_phase or time.monotonic() - self._printed_at >= PLAIN_INTERVAL:
            self._print(progress)

    def _print(self, progress: Any) -> None:
        self._console.print(self._describe(progress), highlight=False, markup=False)
        self._printed, self._printed_at = progress, time.monotonic()

    def close(self) -> None:
        """End the line (terminal) or print the last report if it was not (piped)."""
        if self._last is None:
            return
        if self._terminal:
            self._console.file.write("\n")
            self._console.file.flush()
        elif self._last is not self._printed:
            self._print(self._last)
