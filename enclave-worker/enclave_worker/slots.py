"""The worker's job slots: how many jobs run at once, and the memory they hold between them.

A worker runs up to ``[resources] processes`` jobs at once, each in a job
process of its own (enclave_worker.job_process). The LibOS counts the child
processes of each enclave process against that same figure
(libos.process.parent): the service starts nothing but job processes, so
every slot has its process, and a job process's own budget of children is its
own (job processes start none today).

Memory is shared. Before a job is taken, its intake estimate
(jobs.memory_estimate: its data sets held as Arrow tables and their training,
from the signed manifests' sizes and row counts) is reserved against
``[resources] memory_mb``, next to the reservations of the jobs running now,
so the jobs of one worker together never plan to use more than the enclave's
limit. A job too large for the limit on its own is not refused here: its job
process refuses it with the memory refusal that names the limit and the figure
(libos.limits), as a worker with one slot always did. A job that fits alone
but not beside the running jobs is refused at once with :class:`WorkerBusy`
(RESOURCE_EXHAUSTED): the coordinator puts it back in its queue and runs it
when a job has finished, here or on another worker — waiting here would hold
the party's data stream open for an unknown time.

A draining worker (SIGTERM) takes no new job, also with :class:`WorkerBusy`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from protocols.errors import WorkerBusy

MIB = 1 << 20


@dataclass(frozen=True)
class SlotsStatus:
    """What GetStatus answers: slots, the running jobs' ids (in start order), draining."""

    slots: int
    job_ids: tuple[str, ...]
    draining: bool
    reserved_bytes: int


class JobSlots:
    """Up to ``slots`` jobs at once, whose reserved memory stays within ``memory_bytes``."""

    def __init__(self, slots: int, memory_bytes: int | None) -> None:
        if slots < 1:
            raise ValueError(f"a worker needs at least one job slot, got {slots}")
        self.slots = slots
        self.memory_bytes = memory_bytes
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}  # job id → reserved bytes, in start order
        self._draining = False
        self._idle = threading.Condition(self._lock)

    def status(self) -> SlotsStatus:
        with self._lock:
            return SlotsStatus(
                self.slots, tuple(self._running), self._draining, sum(self._running.values())
            )

    def drain(self) -> None:
        """Take no new job from now on (the worker is stopping)."""
        with self._lock:
            self._draining = True

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the running jobs to end; True if none runs."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._running, timeout)

    @contextmanager
    def reserve(self, job_id: str, needed_bytes: int) -> Iterator[None]:
        """Hold a slot and ``needed_bytes`` of memory for ``job_id`` while the block runs."""
        with self._lock:
            self._check(job_id, needed_bytes)
            self._running[job_id] = needed_bytes
        try:
            yield
        finally:
            with self._idle:
                del self._running[job_id]
                self._idle.notify_all()

    def _check(self, job_id: str, needed: int) -> None:
        later = "run it again once a job has finished, or on another worker"
        if self._draining:
            raise WorkerBusy(f"this enclave worker is stopping and takes no new job; {later}")
        if job_id in self._running:
            raise WorkerBusy(
                f"job {job_id!r} is already running on this enclave worker (a call that is "
                f"still ending); {later}"
            )
        if len(self._running) >= self.slots:
            raise WorkerBusy(
                f"all {self.slots} job slots of this enclave worker are busy ([resources] "
                f"processes in libos.toml); {later}"
            )
        limit = self.memory_bytes
        held = sum(self._running.values())
        # Alone too large: the job process refuses it, naming the limit (see above).
        if limit is not None and self._running and needed <= limit and held + needed > limit:
            raise WorkerBusy(
                f"job {job_id!r} needs an estimated {needed / MIB:,.1f} MiB, but the "
                f"{_jobs(len(self._running))} running now hold {held / MIB:,.1f} MiB of the "
                f"enclave's memory limit of {limit / MIB:,.1f} MiB ([resources] memory_mb in "
                f"libos.toml); {later}"
            )


def _jobs(count: int) -> str:
    return f"{count} job" if count == 1 else f"{count} jobs"
