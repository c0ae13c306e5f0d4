"""Runs approved jobs on the enclave, one at a time, on one background thread.

The scheduler relays: it sends the signed terms, approvals and manifests and
the ciphertext of each data set, and stores what the enclave streams back
(progress text, encrypted outputs, the signed result statement). It decides
nothing about consent; the enclave re-checks everything (docs/protocol.md §5).

Fairness. Waiting jobs are taken round-robin by proposer, so a party that
queues many jobs delays only its own; and a running job holds the enclave at
most its time limit (:class:`coordinator.limits.JobLimits`): a watchdog
cancels the enclave call when the limit passes or when the job's proposer or
the operator cancels it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from coordinator.blobs import BlobStore, BlobWriter
from coordinator.enclave_client import (
    EnclaveCallError,
    EnclaveClient,
    EnclaveProgress,
    JobSpec,
    OutputPiece,
    SignedResult,
)
from coordinator.limits import JobLimits
from coordinator.store import (
    APPROVED,
    CANCELLED,
    FAILED,
    RUNNING,
    SEALED,
    CoordinatorStore,
    JobRecord,
    ModelRecord,
    StoredOutput,
)
from protocols import canonical
from protocols.documents import JobTerms, ResultStatement
from protocols.errors import DetenteError, IntegrityError
from protocols.statements import Envelope
from protocols.stream import CHUNK_SIZE

log = logging.getLogger(__name__)
WATCH_INTERVAL = 0.25


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
    """A fair queue of approved job ids and the one thread that runs them."""

    def __init__(
        self,
        store: CoordinatorStore,
        blobs: BlobStore,
        enclave: EnclaveClient | None,
        limits: JobLimits | None = None,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._enclave = enclave
        self._limits = limits or JobLimits()
        self._queue = FairQueue()
        # Ids waiting in the queue (not the one running: a retry of the running job,
        # once it failed, must be queued again).
        self._queued: set[str] = set()
        self._running: str | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._cancel: Callable[[], object] | None = None
        self._stop_reason: str | None = None  # why the watchdog cancelled the current call

    @property
    def enabled(self) -> bool:
        return self._enclave is not None

    def start(self) -> None:
        if self._enclave is None:
            log.warning("no enclave configured: approved jobs stay approved until one is")
            return
        self._thread = threading.Thread(target=self._loop, name="job-scheduler", daemon=True)
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
        if self._enclave is None:
            log.warning("job %s is approved but no enclave is configured: it waits", job_id)
            return
        with self._lock:
            if job_id in self._queued:
                return
            self._queued.add(job_id)
            self._idle.clear()
        self._queue.put(self._store.get_job(job_id).proposer, job_id)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current job; a job cut off here stays ``running`` and
        goes back to ``approved`` at the next start (see :meth:`recover`)."""
        self._stopping.set()
        self._queue.close()
        cancel = self._cancel
        if cancel is not None:
            cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Block until every submitted job has been handled (for tests and shutdown)."""
        return self._idle.wait(timeout)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._lock:
                self._queued.discard(job_id)
                self._running = job_id
            try:
                self._run(job_id)
            except Exception:
                log.exception("scheduler failed on job %s", job_id)
            finally:
                with self._lock:
                    self._running = None
                    if not self._queued:
                        self._idle.set()

    def _run(self, job_id: str) -> None:
        assert self._enclave is not None
        if not self._store.start_job(job_id):
            log.info("job %s is no longer approved: not run", job_id)
            return
        log.info("job %s running on enclave %s", job_id, self._enclave.address)
        job = self._store.get_job(job_id)
        terms = JobTerms.verify(Envelope.from_bytes(job.terms, "job terms"))
        limit = self._limits.seconds_for(terms)
        self._stop_reason = None
        watching = threading.Event()
        watchdog = threading.Thread(
            target=self._watch,
            args=(job_id, time.monotonic() + limit, limit, watching),
            name=f"watch-{job_id}"[:32],
            daemon=True,
        )
        watchdog.start()
        try:
            outputs, result = self._relay(job)
        except EnclaveCallError as exc:
            if self._stopping.is_set():
                log.info("job %s interrupted by shutdown: it will run again at restart", job_id)
                return
            if self._stop_reason is None and self._store.get_job(job_id).cancel_reason:
                # Cancelled, and the enclave ended the call before the watchdog did (a
                # withdrawal makes the worker stop a job on the withdrawn data set itself).
                self._stop_reason = f"cancel:{limit}"
            if self._stop_reason is not None:
                self._stopped(job_id)
                return
            log.warning("job %s failed on the enclave: %s", job_id, exc.code)
            self._store.transition(
                job_id,
                [RUNNING],
                FAILED,
                FAILED,
                error=exc.details,
                audit_detail={"code": exc.code},
            )
            return
        except DetenteError as exc:
            log.warning("job %s failed: %s", job_id, type(exc).__name__)
            self._store.transition(job_id, [RUNNING], FAILED, FAILED, error=str(exc))
            return
        finally:
            watching.set()
            watchdog.join()
        if result is None:
            self._store.transition(
                job_id,
                [RUNNING],
                FAILED,
                FAILED,
                error="the enclave ended the job without a result statement",
            )
            return
        try:
            model = sealed_model(job, terms, outputs, result)
        except DetenteError as exc:
            log.warning("job %s failed: %s", job_id, exc)
            self._store.transition(job_id, [RUNNING], FAILED, FAILED, error=str(exc))
            for output in outputs:  # kept for no one: not left on disk either
                if not self._store.blob_referenced(output.blob_sha256):
                    self._blobs.delete(output.blob_sha256)
            return
        self._store.finish_job(job_id, outputs, result, model)
        log.info(
            "job %s succeeded with %d output(s)%s",
            job_id,
            len(outputs),
            f", model sealed as {model.model_id}" if model else "",
        )

    def _watch(self, job_id: str, deadline: float, limit: int, done: threading.Event) -> None:
        """While the job runs: cancel its enclave call on a cancel request or at its deadline."""
        while not done.wait(WATCH_INTERVAL):
            reason = None
            if time.monotonic() >= deadline:
                reason = "timeout"
                log.warning("job %s passed its time limit of %d s: stopping it", job_id, limit)
            elif self._store.get_job(job_id).cancel_reason:
                reason = "cancel"
                log.info("job %s cancelled while running: stopping it", job_id)
            if reason is not None:
                self._stop_reason = f"{reason}:{limit}"
                cancel = self._cancel
                if cancel is not None:
                    cancel()
                return

    def _stopped(self, job_id: str) -> None:
        """Record why the watchdog stopped the job: a cancel, or its time limit."""
        kind, _, limit = (self._stop_reason or "").partition(":")
        job = self._store.get_job(job_id)
        if kind == "cancel":
            self._store.transition(job_id, [RUNNING], CANCELLED, job.cancel_reason or CANCELLED)
            return
        self._store.transition(
            job_id,
            [RUNNING],
            FAILED,
            FAILED,
            error=(
                f"the job ran longer than its time limit of {limit} s and was stopped; its "
                f"proposer can resume it from its last checkpoint with `detente party retry "
                f"{job_id}`"
            ),
            audit_detail={"code": "DEADLINE_EXCEEDED", "limit_seconds": int(limit)},
        )

    def _datasets(self, job: JobRecord) -> Iterator[tuple[str, Iterable[bytes]]]:
        for dataset_id in job.dataset_ids:
            record = self._store.get_dataset(dataset_id)
            if record is None:
                raise DetenteError(f"data set {dataset_id!r} of job {job.job_id!r} is gone")
            yield dataset_id, self._chunks(dataset_id, record.blob_sha256)

    def _chunks(self, dataset_id: str, sha256: str) -> Iterator[bytes]:
        """A data set's ciphertext, read once. A blob that no longer matches its name is
        found after its last piece went out: the call is then cancelled before the
        enclave sees the end of its data (so it trains and releases nothing), and the
        job fails naming the data set. The enclave checks each data set against the
        digest in its signed manifest itself, so a coordinator that skipped this check
        would not get a corrupted data set trained either."""
        try:
            yield from self._blobs.iter_chunks(sha256, CHUNK_SIZE)
        except IntegrityError as exc:
            raise IntegrityError(f"the ciphertext of data set {dataset_id!r}: {exc}") from None

    def _relay(self, job: JobRecord) -> tuple[list[StoredOutput], bytes | None]:
        assert self._enclave is not None
        manifests = []
        for dataset_id in job.dataset_ids:
            record = self._store.get_dataset(dataset_id)
            if record is None:
                raise DetenteError(f"data set {dataset_id!r} of job {job.job_id!r} is gone")
            manifests.append(record.manifest)
        spec = JobSpec(job.terms, [a.envelope for a in job.approvals], manifests)
        outputs: list[StoredOutput] = []
        result: bytes | None = None
        current: tuple[str, BlobWriter] | None = None
        try:
            for message in self._enclave.run_job(spec, self._datasets(job), self._set_cancel):
                if isinstance(message, EnclaveProgress):
                    self._store.add_event(job.job_id, message.kind or "progress", message.text)
                elif isinstance(message, OutputPiece):
                    if current is None or current[0] != message.name:
                        if current is not None:
                            outputs.append(self._commit(*current))
                        if any(o.name == message.name for o in outputs):
                            raise DetenteError(
                                f"the enclave sent output {message.name!r} in two pieces"
                            )
                        current = (message.name, self._blobs.writer(what="output"))
                    current[1].write(message.data)
                elif isinstance(message, SignedResult):
                    result = message.data
            if current is not None:
                outputs.append(self._commit(*current))
                current = None
        finally:
            self._cancel = None
            if current is not None:
                current[1].abort()
        return outputs, result

    def _set_cancel(self, cancel: Callable[[], object]) -> None:
        self._cancel = cancel
        if self._stopping.is_set() or self._stop_reason is not None:
            cancel()

    @staticmethod
    def _commit(name: str, writer: BlobWriter) -> StoredOutput:
        sha256, size = writer.commit()
        return StoredOutput(name, sha256, size)


def sealed_model(
    job: JobRecord, terms: JobTerms, outputs: list[StoredOutput], result: bytes
) -> ModelRecord | None:
    """The model a finished job sealed in the enclave, as its result statement names it
    (None if the terms release the model); DetenteError if statement and terms disagree.

    The coordinator reads the statement without checking its signature: the record
    only lets parties find the model, and the enclave keeps its own.
    """
    try:
        envelope = Envelope.from_bytes(result, "result statement")
        named = ResultStatement.from_dict(canonical.loads(envelope.payload, "result")).sealed_model
    except DetenteError:
        if not terms.sealed:
            return None  # the parties verify the statement; nothing here depends on it
        raise DetenteError(
            f"the enclave's result statement for job {job.job_id!r} cannot be read, so the "
            "model it sealed cannot be recorded"
        ) from None
    if not terms.sealed:
        if named is not None:
            raise DetenteError(
                f"the enclave's result statement names a sealed model {named!r}, but the terms "
                f"of job {job.job_id!r} release the model: nothing of it is recorded"
            )
        return None
    if named is None:
        raise DetenteError(
            f"the terms of job {job.job_id!r} seal the model, but the enclave's result "
            "statement names no sealed model: the enclave may not support sealed models; "
            "nothing is recorded"
        )
    if named != job.job_id:
        raise DetenteError(
            f"the enclave's result statement names sealed model {named!r}, not the id of job "
            f"{job.job_id!r} that sealed it: nothing is recorded"
        )
    if any(o.name == "model" for o in outputs):
        raise DetenteError(
            f"the enclave sent a model output for job {job.job_id!r}, whose terms seal the "
            "model: nothing is recorded or released"
        )
    return ModelRecord(
        model_id=named,
        job_id=job.job_id,
        terms_digest=job.terms_digest,
        owners=list(job.required_approvers),
        queriers=[q.signing_key.hex for q in terms.queriers],
        state=SEALED,
        created_at=0,  # set by the store when it records the model
    )
