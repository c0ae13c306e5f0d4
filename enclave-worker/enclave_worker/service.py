"""The enclave's gRPC edge: decode, call the job or model logic, map errors to status codes.

RunJob checks consent here, in the service's process, then runs the job in a
process of its own (enclave_worker.job_process): the data chunks go to that
process as they arrive, and its progress, outputs and statement come back on
the stream. A job process that crashes fails its call with ABORTED ("the job
process crashed: exit code …"); the service keeps serving. A job whose terms
seal the model hands it back to this process, which stores it (models.store)
before the job signs the statement naming it.

Up to ``[resources] processes`` jobs run at once, each holding a slot and
its estimated memory (enclave_worker.slots); a job beyond them is refused at
once with WorkerBusy (RESOURCE_EXHAUSTED) before a byte of its data is read,
so the coordinator can queue it again. GetStatus says what runs now.

ShareIdentity hands this enclave's keys to a worker of the same build that
joins the pool (enclave_worker.provisioning).

Predict, RetireModel, WithdrawDataset and GetStatus run here, in the service's
process, beside running jobs (they never wait for a slot): the model store and the
withdrawn list (enclave_worker.withdrawals) live in the runtime's default
encrypted mount, which is safe for several processes and threads. A
withdrawal stops a running job that reads the withdrawn data set before it
destroys that job's checkpoints.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc

from enclave_worker import job_process, jobs, models, provisioning, withdrawals
from enclave_worker.identity import EnclaveIdentity
from enclave_worker.slots import JobSlots
from libos import limits
from libos.runtime import Runtime
from protocols import grpc_status
from protocols.errors import ConsentError, DetenteError, FormatError, PolicyError
from protocols.stream import CHUNK_SIZE
from protocols.wire.v1 import enclave_pb2, enclave_pb2_grpc

log = logging.getLogger("enclave_worker.service")


def _no_model_store(runtime: Runtime) -> PolicyError:
    return PolicyError(
        f"this enclave ({runtime.backend} backend) has no rollback-protected encrypted mount "
        "to keep sealed models in, so a host could reset the queriers' budgets by putting "
        "back old files: it refuses terms that seal the model and answers no query "
        "(docs/libos.md); release the model, or run the job on an enclave with such a mount"
    )


class EnclaveServicer(enclave_pb2_grpc.EnclaveServicer):
    def __init__(
        self, runtime: Runtime, identity: EnclaveIdentity, pool_roots: tuple[str, ...] = ()
    ) -> None:
        self._runtime = runtime
        self._identity = identity
        self._pool_roots = pool_roots  # the pool's other simulated machines (provisioning)
        self.slots = job_slots()
        fs = runtime.default_mount()
        self._store = models.ModelStore(fs) if fs is not None else None
        self._cache = models.ModelCache()
        self._queries: models.QueryHandler | None = None
        if self._store is not None:
            self._store.sweep()
            self._queries = models.QueryHandler(self._store, self._cache, identity)
        self._withdrawals = withdrawals.Withdrawals(fs) if fs is not None else None
        if self._withdrawals is not None:
            self._withdrawals.sweep(self._store, self._cache)
        # Running jobs by the manifest digests they read: a withdrawal stops them. The lock
        # orders "check the list, then register" against "record, then stop".
        self._running: dict[int, tuple[frozenset[str], job_process.JobProcess]] = {}
        self._running_lock = threading.Lock()

    def _abort(self, context: Any, exc: DetenteError) -> None:
        log.warning("request refused: %s", exc)
        grpc_status.abort(context, exc)

    def GetEvidence(self, request: Any, context: Any) -> Any:
        try:
            evidence = self._identity.evidence(self._runtime, bytes(request.nonce))
        except DetenteError as exc:
            self._abort(context, exc)
        return enclave_pb2.Evidence(
            identity=evidence.identity, quote=evidence.quote, backend=evidence.backend
        )

    def RunJob(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
        try:
            first = next(request_iterator, None)
            if first is None or not first.HasField("spec"):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "RunJob must start with a spec")
                return
            spec = first.spec
            accepted_at = time.time()
            approvals, manifests = list(spec.approvals), list(spec.manifests)
            with self._running_lock:
                job = jobs.accept(
                    self._identity,
                    spec.terms,
                    approvals,
                    manifests,
                    now=accepted_at,
                    withdrawn=self._withdrawn(),
                )
                if self._withdrawals is not None:
                    self._withdrawals.note_job(job)
            needed, _what = jobs.memory_estimate(job)
            with self.slots.reserve(job.terms.job_id, needed):
                yield from self._run(
                    job, approvals, manifests, accepted_at, request_iterator, context
                )
        except job_process.JobCrashedError as exc:
            log.warning("job failed: %s", exc)
            context.abort(grpc.StatusCode.ABORTED, str(exc))
        except job_process.JobFailedError as exc:
            log.warning("job failed: %s", exc)
            context.abort(grpc.StatusCode.INTERNAL, str(exc))
        except DetenteError as exc:
            self._abort(context, exc)
        except Exception:
            # Details stay in the enclave's log; the wire gets no internals.
            log.exception("job failed")
            context.abort(grpc.StatusCode.INTERNAL, "the enclave failed to run the job")

    def _run(
        self,
        job: jobs.AcceptedJob,
        approvals: list[bytes],
        manifests: list[bytes],
        accepted_at: float,
        request_iterator: Iterator[Any],
        context: Any,
    ) -> Iterator[Any]:
        """Run an accepted job that holds its slot: its process, its data in, its results out."""
        if job.terms.sealed:
            # Before any data: a model sealed here must be kept rollback-protected.
            if self._store is None:
                raise _no_model_store(self._runtime)
            self._store.check_can_seal(job.terms, job.terms_envelope.digest)
        with job_process.JobProcess.start(
            self._identity, job, approvals, manifests, accepted_at
        ) as running:
            # A cancelled call (client gone, server stopping) stops its job.
            context.add_callback(running.kill)
            reads = frozenset(d for _, d in job.terms.datasets)
            with self._running_lock:
                self._running[id(running)] = (reads, running)
            if reads & self._withdrawn():  # withdrawn since it was accepted
                running.kill()
            try:
                yield from self._relay(running, job, request_iterator)
            finally:
                with self._running_lock:
                    self._running.pop(id(running), None)

    def _relay(
        self,
        running: job_process.JobProcess,
        job: jobs.AcceptedJob,
        request_iterator: Iterator[Any],
    ) -> Iterator[Any]:
        for request in request_iterator:
            if not request.HasField("chunk"):
                raise FormatError("RunJob takes one spec, then data chunks only")
            # Counted here so a data set longer than its manifest stops at intake.
            job.check_chunk(request.chunk.dataset_id, len(request.chunk.data))
            running.send_chunk(request.chunk.dataset_id, request.chunk.data)
            # What the job reported while its data arrives (bytes, rows), without waiting.
            for report in running.progress():
                yield _progress(report)
        for item in running.results():
            if isinstance(item, jobs.JobProgress):
                yield _progress(item)
            elif isinstance(item, jobs.ReleasedOutput):
                data = item.ciphertext
                for start in range(0, max(len(data), 1), CHUNK_SIZE):
                    yield enclave_pb2.RunJobResponse(
                        output=enclave_pb2.OutputChunk(
                            name=item.name, data=data[start : start + CHUNK_SIZE]
                        )
                    )
            elif isinstance(item, models.SealedModel):
                self._seal(job, item)
                running.model_stored()
            else:
                if job.terms.sealed:
                    # The model answers queries once the statement naming it exists.
                    assert self._store is not None
                    self._store.activate(job.terms.job_id, item)
                yield enclave_pb2.RunJobResponse(result_statement=item)

    def _withdrawn(self) -> frozenset[str]:
        return self._withdrawals.digests() if self._withdrawals is not None else frozenset()

    def _seal(self, job: jobs.AcceptedJob, model: models.SealedModel) -> None:
        if not job.terms.sealed or self._store is None:
            raise FormatError("the job process sent a model its terms do not seal")
        if {d for _, d in job.terms.datasets} & self._withdrawn():
            raise ConsentError(
                f"a data set of job {job.terms.job_id!r} was withdrawn by its owner while the "
                "job ran: its model is not kept"
            )
        owners = sorted({m.owner_key for m in job.manifests.values()}, key=lambda k: k.hex)
        self._store.seal(job.terms_envelope, owners, model)

    def Predict(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
        try:
            if self._queries is None:
                raise _no_model_store(self._runtime)
            first = next(request_iterator, None)
            if first is None or not first.HasField("query"):
                raise FormatError("Predict must start with the signed prediction query")
            checked = self._queries.check(bytes(first.query))
            rows = bytearray()
            for request in request_iterator:
                if not request.HasField("chunk"):
                    raise FormatError("Predict takes one query, then the sealed rows' chunks only")
                if len(rows) + len(request.chunk) > checked.max_bytes:
                    raise FormatError(
                        f"the sealed rows of query {checked.query.query_id!r} exceed "
                        f"{checked.max_bytes:,} bytes, more than {checked.query.rows:,} rows of "
                        f"this model's features can take"
                    )
                rows += request.chunk
            answer = self._queries.answer(checked, bytes(rows))
            del rows
        except DetenteError as exc:
            self._abort(context, exc)
        except Exception:
            log.exception("query failed")
            context.abort(grpc.StatusCode.INTERNAL, "the enclave failed to answer the query")
        data = answer.ciphertext
        for start in range(0, max(len(data), 1), CHUNK_SIZE):
            yield enclave_pb2.PredictResponse(chunk=data[start : start + CHUNK_SIZE])
        yield enclave_pb2.PredictResponse(answer=answer.envelope)

    def RetireModel(self, request: Any, context: Any) -> Any:
        try:
            if self._store is None:
                raise _no_model_store(self._runtime)
            models.retire(self._store, self._cache, request.model_id, list(request.retirements))
        except DetenteError as exc:
            self._abort(context, exc)
        except Exception:
            log.exception("retirement failed")
            context.abort(grpc.StatusCode.INTERNAL, "the enclave failed to retire the model")
        return enclave_pb2.RetireModelResponse()

    def WithdrawDataset(self, request: Any, context: Any) -> Any:
        try:
            if self._withdrawals is None:
                raise PolicyError(
                    f"this enclave ({self._runtime.backend} backend) has no rollback-protected "
                    "encrypted mount to keep its withdrawn list in, so a host could make it "
                    "forget a withdrawal: it cannot record one (docs/libos.md); run the worker "
                    "with such a mount"
                )
            with self._running_lock:
                doc, already = self._withdrawals.record(
                    bytes(request.withdrawal), bytes(request.manifest)
                )
                stopping = [
                    running
                    for reads, running in self._running.values()
                    if doc.manifest_digest in reads
                ]
            for running in stopping:
                running.kill_and_reap()
            shredded = self._withdrawals.shred(
                doc.dataset_id, doc.manifest_digest, self._store, self._cache, already
            )
        except DetenteError as exc:
            self._abort(context, exc)
        except Exception:
            log.exception("withdrawal failed")
            context.abort(grpc.StatusCode.INTERNAL, "the enclave failed to record the withdrawal")
        return enclave_pb2.WithdrawDatasetResponse(
            already=shredded.already,
            checkpoints_removed=shredded.checkpoints_removed,
            models_retired=shredded.models_retired,
            jobs_stopped=len(stopping),
        )

    def GetStatus(self, request: Any, context: Any) -> Any:
        status = self.slots.status()
        return enclave_pb2.WorkerStatus(
            slots=status.slots,
            busy=len(status.job_ids),
            job_ids=list(status.job_ids),
            backend=self._runtime.backend,
            mrenclave=self._runtime.mrenclave,
            draining=status.draining,
        )

    def ShareIdentity(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
        """Key provisioning: this enclave's keys, to a joining worker of its own build only."""
        try:
            yield from provisioning.share(
                self._runtime, self._identity, request_iterator, self._pool_roots
            )
        except DetenteError as exc:
            self._abort(context, exc)
        except Exception:
            log.exception("sharing the identity failed")
            context.abort(grpc.StatusCode.INTERNAL, "the enclave failed to share its identity")


def job_slots() -> JobSlots:
    """This enclave's slots: ``[resources] processes`` jobs within ``memory_mb`` (one slot and
    no memory limit outside an enclave, where no limits are installed)."""
    budget = limits.current()
    if budget is None:
        return JobSlots(1, None)
    return JobSlots(budget.processes, budget.memory_bytes)


def _progress(item: jobs.JobProgress) -> Any:
    return enclave_pb2.RunJobResponse(progress=enclave_pb2.Progress(kind=item.kind, text=item.text))


# The full name of the Enclave service, as the health service reports it.
SERVICE_NAME = enclave_pb2.DESCRIPTOR.services_by_name["Enclave"].full_name


def add_to_server(
    server: Any, runtime: Runtime, identity: EnclaveIdentity, pool_roots: tuple[str, ...] = ()
) -> EnclaveServicer:
    servicer = EnclaveServicer(runtime, identity, pool_roots)
    enclave_pb2_grpc.add_EnclaveServicer_to_server(servicer, server)
    return servicer
