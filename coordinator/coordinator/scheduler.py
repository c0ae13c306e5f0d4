"""Runs approved jobs on the worker pool: several at once, each worker up to its slots.

One dispatcher thread takes the next job from the fair queue, waits for a
serving worker with a free slot (:meth:`coordinator.pool.WorkerPool.acquire`)
and starts the job's run there in a thread of its own
(:class:`coordinator.job_run.JobRun`, which relays and records).

Fairness. Waiting jobs are taken round-robin by proposer, so a party that
queues many jobs delays only its own; and a running job holds its worker at
most its time limit (:class:`coordinator.limits.JobLimits`): a watchdog
cancels the call when the limit passes or when the job's proposer or the
operator cancels it.

Re-queue. A run whose worker died or whose call broke (UNAVAILABLE,
CANCELLED: see coordinator.job_run.LOST_CODES), or whose worker answered
WorkerBusy, goes back to ``approved`` and into the queue without any party
acting (audit entry ``job.requeued`` naming the
worker and the reason); it runs on another serving worker, or on the same one
once it is back, where the enclave resumes it from its checkpoint. After
``max_losses`` lost workers the job fails, naming `detente party retry`.
"""

from __future__ import annotations

import collections
import logging
import threading

from coordinator.blobs import BlobStore
from coordinator.job_run import JobRun, Outcome, sealed_model
from coordinator.limits import JobLimits
from coordinator.pool import WorkerPool
from coordinator.store import APPROVED, CANCELLED, FAILED, RUNNING, CoordinatorStore

log = logging.getLogger(__name__)
# Workers a job may lose (died, or its call broke) before it fails; a party's retry
# starts the count afresh.
MAX_WORKER_LOSSES = 3


class FairQueue:
    """Job ids waiting to run, handed out to the proposer served least recently.

    Each proposer's jobs run in the order they came; between proposers, the
    one whose job was taken longest ago (or never) goes first, so a party
    that queues many jobs, or queues again right after its job started,
    waits for everyone else's turn.
    """

    def __init__(self) -> None:
        self._by_proposer: dict[str, collections.deque[tuple[int, str]]] = {}
        self._last_served: dict[str, int] = {}
        self._tick = 0  # counts puts and gets: a logical clock
        self._ready = threading.Condition()
        self._closed = False

    def put(self, proposer: str, job_id: str) -> None:
        with self._ready:
            self._tick += 1
            self._by_proposer.setdefault(proposer, collections.deque()).append((self._tick, job_id))
            self._ready.notify()

    def get(self) -> str | None:
        """The next job id (None once closed)."""
        with self._ready:
            while not self._by_proposer and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            proposer = min(
                self._by_proposer,
                key=lambda p: (self._last_served.get(p, 0), self._by_proposer[p][0][0]),
            )
            waiting = self._by_proposer[proposer]
            _, job_id = waiting.popleft()
            if not waiting:
                del self._by_proposer[proposer]
            self._tick += 1
            self._last_served[proposer] = self._tick
            return job_id

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()


class Scheduler:
    """A fair queue of approved job ids, a dispatcher, and a thread per running job."""

    def __init__(
        self,
        store: CoordinatorStore,
        blobs: BlobStore,
        pool: WorkerPool,
        limits: JobLimits | None = None,
        max_losses: int = MAX_WORKER_LOSSES,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._pool = pool
        self._limits = limits or JobLimits()
        self._max_losses = max_losses
        self._queue = FairQueue()
        # Ids waiting in the queue or for a slot (not those running: a retry of a running
        # job, once it failed, must be queued again).
        self._queued: set[str] = set()
        self._runs: dict[str, JobRun] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._idle = threading.Event()
        self._idle.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._dispatch, name="job-scheduler", daemon=True)
        self._thread.start()

    def recover(self) -> None:
        """After a restart: jobs left ``running`` go back to ``approved`` (or to ``cancelled``
        if a cancel was requested); schedule all approved."""
        for job_id in self._store.job_ids_in_states([RUNNING]):
            reason = self._store.get_job(job_id).cancel_reason
            if reason and self._store.transition(job_id, [RUNNING], CANCELLED, reason):
                continue
            if self._store.transition(
                job_id,
                [RUNNING],
                APPROVED,
                "approved (the coordinator restarted while the job ran; it will run again)",
            ):
                log.info("job %s was running at shutdown: back to approved", job_id)
        for job_id in self._store.job_ids_in_states([APPROVED]):
            self.submit(job_id)

    def submit(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._queued:
                return
            self._queued.add(job_id)
            self._idle.clear()
        self._queue.put(self._store.get_job(job_id).proposer, job_id)

    def running(self) -> dict[str, str]:
        """The jobs running now and the worker (HOST:PORT) each runs on."""
        with self._lock:
            return {job_id: run.worker.address for job_id, run in self._runs.items()}

    def stop(self, timeout: float = 5.0) -> None:
        """Stop dispatching and cut off the running calls; a job cut off here stays
        ``running`` and goes back to ``approved`` at the next start (see :meth:`recover`)."""
        self._stopping.set()
        self._queue.close()
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Block until every submitted job has been handled (for tests and shutdown)."""
        return self._idle.wait(timeout)

    def _settle(self) -> None:
        with self._lock:
            if not self._queued and not self._runs:
                self._idle.set()

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            # A slot first, then the job: the fair queue's choice is made when a job can
            # start, not before (a job taken early would wait ahead of later proposers').
            if not self._pool.wait_free(self._stopping):
                return
            job_id = self._queue.get()
            if job_id is None:
                return
            worker = self._pool.acquire(job_id, self._stopping)
            if worker is None:
                return
            attempt = self._store.start_job(job_id, worker.address)
            if not attempt:
                log.info("job %s is no longer approved: not run", job_id)
                self._pool.release(worker, job_id)
                with self._lock:
                    self._queued.discard(job_id)
                self._settle()
                continue
            log.info("job %s running on worker %s (attempt %d)", job_id, worker.address, attempt)
            run = JobRun(
                self._store,
                self._blobs,
                self._pool,
                self._limits,
                worker,
                job_id,
                attempt,
                self._stopping,
            )
            with self._lock:
                self._queued.discard(job_id)
                self._runs[job_id] = run
            threading.Thread(
                target=self._run, args=(run,), name=f"job-{job_id}"[:32], daemon=True
            ).start()

    def _run(self, run: JobRun) -> None:
        outcome = Outcome.DONE
        try:
            outcome = run.run()
        except Exception:
            log.exception("scheduler failed on job %s", run.job_id)
        finally:
            self._pool.release(run.worker, run.job_id)
            with self._lock:
                self._runs.pop(run.job_id, None)
        try:
            self._after(run, outcome)
        except Exception:
            log.exception("scheduler failed to re-queue job %s", run.job_id)
        finally:
            self._settle()

    def _after(self, run: JobRun, outcome: Outcome) -> None:
        """Re-queue the job if its worker was lost, busy or refused."""
        if outcome in (Outcome.DONE, Outcome.SHUTDOWN):
            return
        if outcome is Outcome.BUSY:
            self._pool.mark_busy(run.worker)
        else:
            self._pool.mark_lost(run.worker, f"{run.reason} while running job {run.job_id}")
        state = self._store.requeue_job(
            run.job_id,
            run.attempt,
            run.worker.address,
            run.reason,
            lost=outcome is Outcome.LOST,
            max_losses=self._max_losses,
        )
        log.warning(
            "job %s: worker %s %s: %s",
            run.job_id,
            run.worker.address,
            run.reason,
            {APPROVED: "re-queued", FAILED: "too many lost workers, failed"}.get(
                state or "", f"now {state}"
            ),
        )
        if state == APPROVED and not self._stopping.is_set():
            self.submit(run.job_id)


__all__ = ["MAX_WORKER_LOSSES", "FairQueue", "Scheduler", "sealed_model"]
