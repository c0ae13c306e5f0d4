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


def _eta(seconds: float) -> str:
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def describe(p: UploadProgress, rate: float | None = None) -> str:
    """One line saying how far an upload is; with ``rate`` (bytes per second in this phase),
    the throughput and, while sending, the time left."""
    speed = f", {rate / 1e6:,.1f} MB/s" if rate else ""
    if p.phase == SEALING:
        return f"checked and sealed {p.rows:,} rows ({_mb(p.bytes)} of ciphertext){speed}"
    share = f" ({100 * p.bytes / p.total_bytes:.0f}%)" if p.total_bytes else ""
    resumed = f", resumed at {_mb(p.resumed_at)}" if p.resumed_at else ""
    left = ""
    if rate and p.total_bytes:
        left = f", ETA {_eta(max(0, p.total_bytes - p.bytes) / rate)}"
    return (
        f"sent {p.rows:,} of {p.total_rows or 0:,} rows, {_mb(p.bytes)} of "
        f"{_mb(p.total_bytes or 0)}{share}{resumed}{speed}{left}"
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
    :func:`describe_query`, :func:`party_client.predict`) writing to ``console``.

    For uploads each line also shows the throughput of the current phase and,
    while sending, the time left at that rate.
    """

    def __init__(self, console: Console, describe: Callable[[Any], str] | None = None) -> None:
        self._describe: Callable[[Any], str] = describe or self._upload_line
        self._phase_start: tuple[Any, float, int] | None = None  # phase, time, bytes
        self._console = console
        self._terminal = console.is_terminal
        self._last: Any = None  # the latest report
        self._printed: Any = None  # the latest one printed (piped)
        self._printed_at = 0.0
        self._width = 0

    def _upload_line(self, progress: UploadProgress) -> str:
        rate = None
        if self._phase_start is not None and self._phase_start[0] == progress.phase:
            _, since, start_bytes = self._phase_start
            elapsed = time.monotonic() - since
            done = progress.total_bytes is not None and progress.bytes >= progress.total_bytes
            # A rate over less than 0.2 s says little, except for a phase already done.
            if elapsed >= 0.2 or (done and elapsed > 0):
                rate = (progress.bytes - start_bytes) / elapsed
        return describe(progress, rate)

    def __call__(self, progress: Any) -> None:
        phase = getattr(progress, "phase", None)
        if self._phase_start is None or self._phase_start[0] != phase:
            self._phase_start = (phase, time.monotonic(), getattr(progress, "bytes", 0))
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
