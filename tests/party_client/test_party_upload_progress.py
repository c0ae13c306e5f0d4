"""The upload's progress line: bytes, rows, throughput and time left; plain lines when piped."""

from __future__ import annotations

import io
import time

from rich.console import Console

from party_client.cli.progress import UploadReport, describe
from party_client.datasets import SEALING, SENDING, UploadProgress


def test_a_line_names_rows_bytes_share_throughput_and_eta() -> None:
    line = describe(UploadProgress(SENDING, 50, 9_000_000, 100, 20_000_000), rate=2e6)
    assert line == ("sent 50 of 100 rows, 9.0 MB of 20.0 MB (45%), 2.0 MB/s, ETA 0:00:06")


def test_a_resumed_upload_says_where_it_resumed() -> None:
    line = describe(UploadProgress(SENDING, 60, 12_000_000, 100, 20_000_000, 4_000_000))
    assert "resumed at 4.0 MB" in line and "(60%)" in line


def test_piped_output_measures_the_phase_it_reports() -> None:
    buffer = io.StringIO()
    report = UploadReport(Console(file=buffer, force_terminal=False, width=200))
    report(UploadProgress(SEALING, 10, 1_000))
    for step in range(1, 4):
        time.sleep(0.25)
        report(UploadProgress(SENDING, 30 * step, 5_000_000 * step, 90, 15_000_000))
    report.close()
    lines = buffer.getvalue().splitlines()
    assert lines[0].startswith("checked and sealed 10 rows")
    assert lines[-1].startswith("sent 90 of 90 rows, 15.0 MB of 15.0 MB (100%)")
    assert "MB/s" in lines[-1] and "ETA 0:00:00" in lines[-1]
