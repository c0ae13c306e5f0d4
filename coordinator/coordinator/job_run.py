"""One run of one job on one worker of the pool: relay, watchdog, and how it ended.

The run relays: it sends the signed terms, approvals and manifests and the
ciphertext of each data set, and stores what the enclave streams back
(progress text, encrypted outputs, the signed result statement). It decides
nothing about consent; the enclave re-checks everything (docs/protocol.md §5).

A watchdog stops the run's call when its time limit passes, when its
proposer or the operator cancels the job, or when its worker has not
answered the pool's checks for LOST_SECONDS. How the run ended is its
:class:`Outcome`; the scheduler re-queues the job when the worker was lost
or busy. Everything the run records names its attempt, so a run that was
re-queued meanwhile records nothing (see coordinator.store.sql_pool).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from coordinator.blobs import BlobStore, BlobWriter
from coordinator.enclave_client import (
    EnclaveCallError,
    EnclaveNotTrusted,
    EnclaveProgress,
    JobSpec,
    OutputPiece,
    SignedResult,
)
from coordinator.limits import JobLimits
from coordinator.pool import LOST_SECONDS, PooledWorker, WorkerPool
from coordinator.store import (
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
from protocols.errors import DetenteError, IntegrityError, WorkerBusy
from protocols.statements import Envelope
from protocols.stream import CHUNK_SIZE

log = logging.getLogger("coordinator.scheduler")
WATCH_INTERVAL = 0.25
# Status codes of a call that broke with its worker (it died, restarted or stopped), not
# because the enclave refused or failed the job: the job is re-queued. A job process
# that crashed inside a living worker (ABORTED) fails the job instead: the crash may be
# the job's own, and its proposer decides whether to retry it.
LOST_CODES = frozenset({"UNAVAILABLE", "CANCELLED"})
BUSY_ERROR = WorkerBusy.__name__  # the catalogue class a worker with no free slot names


class Outcome(enum.Enum):
    DONE = "done"  # recorded: succeeded, failed or cancelled (or no longer this run's)
    LOST = "lost"  # the worker died or its call broke: re-queue, counting a loss
    BUSY = "busy"  # every slot of the worker was taken: re-queue elsewhere
    REFUSED = "refused"  # the worker failed attestation when the call opened: re-queue
    SHUTDOWN = "shutdown"  # the coordinator stops: the job runs again at the next start


class JobRun:
    """Runs ``job_id`` (attempt ``attempt``) on ``worker``; :meth:`run` says how it ended."""

    def __init__(
        self,
        store: CoordinatorStore,
        blobs: BlobStore,
        pool: WorkerPool,
        limits: JobLimits,
        worker: PooledWorker,
        job_id: str,
        attempt: int,
        stopping: threading.Event,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._pool = pool
        self._limits = limits
        self.worker = worker
        self.job_id = job_id
        self.attempt = attempt
        self._stopping = stopping
        self._cancel: Callable[[], object] | None = None
        self._stop_reason: str | None = None  # why the watchdog cancelled the call
        self.reason = ""  # for LOST, BUSY and REFUSED: what happened (public words)

    def cancel(self) -> None:
        """Cancel the call now (the coordinator stops)."""
        cancel = self._cancel
        if cancel is not None:
            cancel()

    def run(self) -> Outcome:
        job = self._store.get_job(self.job_id)
        terms = JobTerms.verify(Envelope.from_bytes(job.terms, "job terms"))
        limit = self._limits.seconds_for(terms)
        watching = threading.Event()
        watchdog = threading.Thread(
            target=self._watch,
            args=(time.monotonic() + limit, limit, watching),
            name=f"watch-{self.job_id}"[:32],
            daemon=True,
        )
        watchdog.start()
        try:
            outputs, result = self._relay(job)
        except EnclaveNotTrusted as exc:
            self.reason = f"failed attestation ({str(exc)[:300]})"
            return Outcome.REFUSED
        except EnclaveCallError as exc:
            return self._call_failed(exc)
        except DetenteError as exc:
            log.warning("job %s failed: %s", self.job_id, type(exc).__name__)
            self._fail(str(exc))
            return Outcome.DONE
        finally:
            watching.set()
            watchdog.join()
        if result is None:
            self._fail("the enclave ended the job without a result statement")
            return Outcome.DONE
        self._finish(job, terms, outputs, result)
        return Outcome.DONE

    def _call_failed(self, exc: EnclaveCallError) -> Outcome:
        if self._stopping.is_set():
            log.info("job %s interrupted by shutdown: it will run again at restart", self.job_id)
            return Outcome.SHUTDOWN
        kind, _, _ = (self._stop_reason or "").partition(":")
        if kind == "lost":
            self.reason = f"stopped answering for {LOST_SECONDS:.0f} s"
            return Outcome.LOST
        if self._stop_reason is None and self._store.get_job(self.job_id).cancel_reason:
            # Cancelled, and the enclave ended the call before the watchdog did (a
            # withdrawal makes the worker stop a job on the withdrawn data set itself).
            self._stop_reason = "cancel:0"
        if self._stop_reason is not None:
            self._stopped()
            return Outcome.DONE
        if exc.error == BUSY_ERROR:
            self.reason = "had no free job slot (WorkerBusy)"
            return Outcome.BUSY
        if exc.code in LOST_CODES:
            self.reason = f"lost the call ({exc.code}: {exc.details[:300]})"
            return Outcome.LOST
        log.warning("job %s failed on worker %s: %s", self.job_id, self.worker.address, exc.code)
        self._fail(exc.details, {"code": exc.code})
        return Outcome.DONE

    def _fail(self, error: str, detail: dict[str, object] | None = None) -> None:
        self._store.transition(
            self.job_id,
            [RUNNING],
            FAILED,
            FAILED,
            error=error,
            audit_detail=detail,
            attempt=self.attempt,
        )

    def _finish(
        self, job: JobRecord, terms: JobTerms, outputs: list[StoredOutput], result: bytes
    ) -> None:
        try:
            model = sealed_model(job, terms, outputs, result, self.worker.address)
        except DetenteError as exc:
            log.warning("job %s failed: %s", self.job_id, exc)
            self._fail(str(exc))
            self._drop(outputs)
            return
        if not self._store.finish_job(self.job_id, outputs, result, model, attempt=self.attempt):
            # This run was re-queued or stopped meanwhile: another run owns the job now.
            log.warning(
                "job %s: a late result from worker %s (attempt %d) discarded",
                self.job_id,
                self.worker.address,
                self.attempt,
            )
            self._drop(outputs)
            return
        log.info(
            "job %s succeeded on worker %s with %d output(s)%s",
            self.job_id,
            self.worker.address,
            len(outputs),
            f", model sealed as {model.model_id}" if model else "",
        )

    def _drop(self, outputs: list[StoredOutput]) -> None:
        """Outputs kept for no one: not left on disk either."""
        for output in outputs:
            if not self._store.blob_referenced(output.blob_sha256):
                self._blobs.delete(output.blob_sha256)

    def _watch(self, deadline: float, limit: int, done: threading.Event) -> None:
        """While the job runs: cancel its call on a cancel request, at its deadline, or
        once its worker has been silent for LOST_SECONDS."""
        while not done.wait(WATCH_INTERVAL):
            reason = None
            if time.monotonic() >= deadline:
                reason = "timeout"
                log.warning("job %s passed its time limit of %d s: stopping it", self.job_id, limit)
            elif self._store.get_job(self.job_id).cancel_reason:
                reason = "cancel"
                log.info("job %s cancelled while running: stopping it", self.job_id)
            elif self._pool.silent_for(self.worker) > LOST_SECONDS:
                reason = "lost"
                log.warning(
                    "job %s: worker %s silent for %.0f s: giving the run up",
                    self.job_id,
                    self.worker.address,
                    LOST_SECONDS,
                )
            if reason is not None:
                self._stop_reason = f"{reason}:{limit}"
                self.cancel()
                return

    def _stopped(self) -> None:
        """Record why the watchdog stopped the job: a cancel, or its time limit."""
        kind, _, limit = (self._stop_reason or "").partition(":")
        job = self._store.get_job(self.job_id)
        if kind == "cancel":
            self._store.transition(
                self.job_id,
                [RUNNING],
                CANCELLED,
                job.cancel_reason or CANCELLED,
                attempt=self.attempt,
            )
            return
        self._store.transition(
            self.job_id,
            [RUNNING],
            FAILED,
            FAILED,
            error=(
                f"the job ran longer than its time limit of {limit} s and was stopped; its "
                f"proposer can resume it from its last checkpoint with `detente party retry "
                f"{self.job_id}`"
            ),
            audit_detail={"code": "DEADLINE_EXCEEDED", "limit_seconds": int(limit)},
            attempt=self.attempt,
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
        client = self.worker.client
        try:
            for message in client.run_job(spec, self._datasets(job), self._set_cancel):
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
    job: JobRecord, terms: JobTerms, outputs: list[StoredOutput], result: bytes, worker: str = ""
) -> ModelRecord | None:
    """The model a finished job sealed in the enclave of ``worker``, as its result
    statement names it (None if the terms release the model); DetenteError if statement
    and terms disagree.

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
        worker=worker,
    )
