"""Atomic, durable file writes: the one helper every component writes files with.

A reader sees the old content or the new, never a part: the bytes go to a
temporary file in the same folder (unique per process and thread), are
fsynced, renamed over the target, and the folder is fsynced so the rename
survives a crash. The temporary file is named ``.NAME.PID.THREAD.tmp``.
``mode`` is set before any byte is written, so a secret is never readable by
others, not even for a moment.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (and durably, unless ``durable`` is False,
    for caches whose loss costs only a recomputation), created with ``mode``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed or the file pre-existed
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
