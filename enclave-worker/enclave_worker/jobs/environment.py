"""What a job gets from the process it runs in (limits, checkpoint storage) and reports back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from libos import limits

if TYPE_CHECKING:
    from enclave_worker.models.store import SealedModel


@dataclass
class JobProgress:
    """One progress report of a running job: ``kind`` (timing, progress, round, …) and text."""

    kind: str
    text: str


class CheckpointStore(Protocol):
    """Where training checkpoints live: the encrypted file system, never plain host files."""

    def read(self, name: str) -> bytes | None: ...
    def write(self, name: str, data: bytes) -> None: ...


@dataclass
class JobEnvironment:
    """What ``jobs.run`` gets from the process it runs in.

    ``check_allocation(nbytes, what)`` raises before a large allocation that
    the enclave's memory limit cannot hold; ``peak_rss_bytes`` is the peak
    memory of the process (both libos.limits by default: outside an enclave
    the check allows all); ``emit`` receives progress while XGBoost trains (a
    generator cannot yield from inside it); ``checkpoints`` keeps boosters
    between rounds so a re-run resumes; ``seal_model`` keeps the model of a
    job whose terms seal it (the worker's model store, in its service
    process) and returns once it is stored: the result statement is signed
    after it.
    """

    check_allocation: Callable[[int, str], None] = limits.check_allocation
    peak_rss_bytes: Callable[[], int] = limits.peak_rss_bytes
    emit: Callable[[JobProgress], None] | None = None
    checkpoints: CheckpointStore | None = None
    seal_model: Callable[[SealedModel], None] | None = None
