"""Runs approved jobs on the enclave, one at a time, on one background thread.

The scheduler relays: it sends the signed terms, approvals and manifests and
the ciphertext of each data set, and stores what the enclave streams back
(progress text, encrypted outputs, the signed result statement). It decides
nothing about consent; the enclave re-checks everything (DESIGN.md §3.5).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator

from coordinator.blobs import BlobStore, BlobWriter
from coordinator.enclave_client import (
    EnclaveCallError,
    EnclaveClient,
    JobSpec,
    OutputChunk,
    Progress,
    ResultStatement,
)
from coordinator.store import (
    APPROVED,
    FAILED,
    RUNNING,
    CoordinatorStore,
    JobRecord,
    OutputRecord,
)
from protocols.errors import DetenteError

log = logging.getLogger(__name__)
DATASET_CHUNK = 1 << 20
_STOP = object()


class Scheduler:
    """A queue of approved job ids and the one thread that runs them."""

    def __init__(
        self, store: CoordinatorStore, blobs: BlobStore, enclave: EnclaveClient | None
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._enclave = enclave
        self._queue: queue.Queue[object] = queue.Queue()
        self._queued: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._cancel: Callable[[], object] | None = None

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
        """After a restart: jobs left ``running`` go back to ``approved``; schedule all approved."""
        for job_id in self._store.job_ids_in_states([RUNNING]):
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
        self._queue.put(job_id)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current job; a job cut off here stays ``running`` and
        goes back to ``approved`` at the next start (see :meth:`recover`)."""
        self._stopping.set()
        self._queue.put(_STOP)
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
            item = self._queue.get()
            if item is _STOP:
                return
            job_id = str(item)
            try:
                self._run(job_id)
            except Exception:
                log.exception("scheduler failed on job %s", job_id)
            finally:
                with self._lock:
                    self._queued.discard(job_id)
                    if not self._queued:
                        self._idle.set()

    def _run(self, job_id: str) -> None:
        assert self._enclave is not None
        if not self._store.transition(job_id, [APPROVED], RUNNING, RUNNING):
            log.info("job %s is no longer approved: not run", job_id)
            return
        log.info("job %s running on enclave %s", job_id, self._enclave.address)
        job = self._store.get_job(job_id)
        try:
            outputs, result = self._relay(job)
        except EnclaveCallError as exc:
            if self._stopping.is_set():
                log.info("job %s interrupted by shutdown: it will run again at restart", job_id)
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
        if result is None:
            self._store.transition(
                job_id,
                [RUNNING],
                FAILED,
                FAILED,
                error="the enclave ended the job without a result statement",
            )
            return
        self._store.finish_job(job_id, outputs, result)
        log.info("job %s succeeded with %d output(s)", job_id, len(outputs))

    def _datasets(self, job: JobRecord) -> Iterator[tuple[str, Iterable[bytes]]]:
        for dataset_id in job.dataset_ids:
            record = self._store.get_dataset(dataset_id)
            if record is None:
                raise DetenteError(f"data set {dataset_id!r} of job {job.job_id!r} is gone")
            yield dataset_id, self._blobs.iter_chunks(record.blob_sha256, DATASET_CHUNK)

    def _relay(self, job: JobRecord) -> tuple[list[OutputRecord], bytes | None]:
        assert self._enclave is not None
        manifests = []
        for dataset_id in job.dataset_ids:
            record = self._store.get_dataset(dataset_id)
            if record is None:
                raise DetenteError(f"data set {dataset_id!r} of job {job.job_id!r} is gone")
            manifests.append(record.manifest)
        spec = JobSpec(job.terms, [a.envelope for a in job.approvals], manifests)
        outputs: list[OutputRecord] = []
        result: bytes | None = None
        current: tuple[str, BlobWriter] | None = None
        try:
            for message in self._enclave.run_job(spec, self._datasets(job), self._set_cancel):
                if isinstance(message, Progress):
                    self._store.add_event(job.job_id, message.kind or "progress", message.text)
                elif isinstance(message, OutputChunk):
                    if current is None or current[0] != message.name:
                        if current is not None:
                            outputs.append(self._commit(*current))
                        if any(o.name == message.name for o in outputs):
                            raise DetenteError(
                                f"the enclave sent output {message.name!r} in two pieces"
                            )
                        current = (message.name, self._blobs.writer(what="output"))
                    current[1].write(message.data)
                elif isinstance(message, ResultStatement):
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
        if self._stopping.is_set():
            cancel()

    @staticmethod
    def _commit(name: str, writer: BlobWriter) -> OutputRecord:
        sha256, size = writer.commit()
        return OutputRecord(name, sha256, size)
