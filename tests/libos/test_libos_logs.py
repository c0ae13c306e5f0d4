"""Tracebacks written in the enclave keep their frames and withhold foreign exception texts."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import threading

from libos import logs
from protocols.errors import DatasetError

CANARY = "CANARY-7f3a91"


def _raise_numpy_like() -> None:
    raise ValueError(f"could not convert string to float: '{CANARY}'")


def test_a_foreign_exception_keeps_type_and_frames_but_not_its_text():
    try:
        _raise_numpy_like()
    except ValueError as exc:
        text = logs.describe_exception(exc)
    assert CANARY not in text
    assert "ValueError (message withheld: it may quote data)" in text
    assert "in _raise_numpy_like" in text and "test_libos_logs.py" in text


def test_a_detente_error_keeps_its_message_and_the_whole_chain_is_scrubbed():
    try:
        try:
            _raise_numpy_like()
        except ValueError as inner:
            raise DatasetError("data set 'a' column 'x' holds text, not numbers") from inner
    except DatasetError as exc:
        text = logs.describe_exception(exc)
    assert CANARY not in text
    assert "DatasetError: data set 'a' column 'x' holds text, not numbers" in text
    assert text.index("ValueError") < text.index("DatasetError")  # causes first, as Python does


def test_log_records_with_exc_info_are_scrubbed():
    stream = io.StringIO()
    logs.configure("%(levelname)s %(message)s", stream=stream)
    try:
        try:
            _raise_numpy_like()
        except ValueError:
            logging.getLogger("enclave_worker.test").exception("job failed")
    finally:
        logging.getLogger().handlers.clear()
    written = stream.getvalue()
    assert "ERROR job failed" in written and "ValueError (message withheld" in written
    assert CANARY not in written


def test_uncaught_exceptions_of_threads_and_of_the_process_are_scrubbed():
    code = f"""
import threading
from libos import logs
logs.install_hooks()
def boom():
    raise KeyError("{CANARY}")
t = threading.Thread(target=boom, name="worker-thread"); t.start(); t.join()
raise RuntimeError("{CANARY} in main")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert CANARY not in done.stderr
    assert "uncaught exception in thread worker-thread" in done.stderr
    assert "KeyError (message withheld" in done.stderr
    assert "RuntimeError (message withheld" in done.stderr
    assert threading.excepthook is not logs._print_uncaught_in_thread  # this process untouched
