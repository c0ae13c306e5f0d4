"""Upload progress as the CLI shows it: one line redrawn on a terminal, plain lines when piped."""

from __future__ import annotations

import time

from rich.console import Console

from party_client.datasets import SEALING, UploadProgress

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


class UploadReport:
    """A progress callback for :func:`party_client.upload` writing to ``console``."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._terminal = console.is_terminal
        self._last: UploadProgress | None = None  # the latest report
        self._printed: UploadProgress | None = None  # the latest one printed (piped)
        self._printed_at = 0.0
        self._width = 0

    def __call__(self, progress: UploadProgress) -> None:
        previous, self._last = self._last, progress
        if self._terminal:
            line = describe(progress)
            self._console.file.write("\r" + line.ljust(self._width))
            self._console.file.flush()
            self._width = len(line)
            return
        new_phase = previous is not None and previous.phase != progress.phase
        if new_phase and previous is not None and previous is not self._printed:
            self._print(previous)
        if new_phase or time.monotonic() - self._printed_at >= PLAIN_INTERVAL:
            self._print(progress)

    def _print(self, progress: UploadProgress) -> None:
        self._console.print(describe(progress), highlight=False, markup=False)
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
