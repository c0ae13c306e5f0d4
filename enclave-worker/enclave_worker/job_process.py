"""One child process per job (libos.process): a crashing job never takes the worker down.

The worker's service (the parent) checks consent (jobs.accept) and receives
the ciphertext; the job process decrypts, joins, trains, seals the outputs and
signs the result statement with the enclave's key. The parent hands it the
identity keys in the spawn payload — over the pipe, never a file or the
environment — so the child shares the enclave's keys without attesting again.

The job protocol on top of libos.process's pipe frames:

parent → child
    payload (at spawn)  JSON: ``identity`` (``keys``: the enclave's private keys
                        as EnclaveIdentity.private_keys encodes them, as in the
                        sealed identity; ``backend``, ``mrenclave``), ``terms``,
                        ``approvals``, ``manifests`` (hex envelopes) and
                        ``accepted_at`` (the time the parent checked consent)
    ``chunk``           u16 length of the data set id ‖ id ‖ ciphertext bytes
    ``end``             empty: every data set has arrived
child → parent
    ``progress``        JSON ``{"kind", "text"}``, forwarded as a gRPC Progress (also
                        while the data arrives: the parent reads them between chunks)
    ``output``          u16 length of the output name ‖ name ‖ up to 1 MiB of ciphertext
    ``model``           up to 1 MiB of a sealed model's ``save_raw("ubj")`` (terms that
                        seal the model), before the statement
    ``model-end``       JSON: the model's schema (models.schema); the job then
                        waits for ``model-stored`` before it signs the statement
    ``statement``       the signed result statement (last)

parent → child, once more
    ``model-stored``    empty: the service stored the sealed model (models.store)

The child runs jobs.accept again on the same bytes (and the parent's clock),
so the job it trains is one that passed every consent check in its own
process. It opens each data set's chunks as they arrive (jobs.intake), and
imports numpy, pyarrow and XGBoost on a thread from its start, while the data
streams in. A child that crashes is reported as :class:`JobCrashedError`; one
whose code raised an unexpected exception as :class:`JobFailedError`, with
the details in ``logs/job-<id>.log``.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from enclave_worker import jobs
from enclave_worker.identity import EnclaveIdentity
from enclave_worker.models.schema import ModelSchema
from enclave_worker.models.store import SealedModel
from libos import process
from protocols import canonical
from protocols.errors import DetenteError, FormatError, IntegrityError
from protocols.stream import CHUNK_SIZE

if TYPE_CHECKING:
    from libos.efs import EncryptedFS

log = logging.getLogger("enclave_worker.job_process")

TARGET = "enclave_worker.job_process:job_main"
# Version 2: the keys as EnclaveIdentity.private_keys encodes them.
PAYLOAD_VERSION = 2
_NAME_SIZE = struct.Struct(">H")


class JobCrashedError(DetenteError):
    """The job's process ended without finishing (killed, crashed, out of memory)."""


class JobFailedError(DetenteError):
    """The job's process hit an unexpected internal error (details in the enclave's log)."""


def _named(name: str, data: bytes) -> bytes:
    raw = name.encode("utf-8")
    return _NAME_SIZE.pack(len(raw)) + raw + data


def _unnamed(body: bytes, what: str) -> tuple[str, memoryview]:
    """(name, the rest of ``body``, a view: a data chunk is not copied again)."""
    if len(body) < _NAME_SIZE.size:
        raise FormatError(f"a {what} message is too short")
    (size,) = _NAME_SIZE.unpack_from(body)
    end = _NAME_SIZE.size + size
    if len(body) < end:
        raise FormatError(f"a {what} message is truncated")
    try:
        return body[_NAME_SIZE.size : end].decode("utf-8"), memoryview(body)[end:]
    except UnicodeDecodeError:
        raise FormatError(f"a {what} message has a name that is not UTF-8") from None


def _payload(
    identity: EnclaveIdentity,
    terms: bytes,
    approvals: list[bytes],
    manifests: list[bytes],
    accepted_at: float,
) -> bytes:
    return json.dumps(
        {
            "version": PAYLOAD_VERSION,
            "identity": {
                "keys": identity.private_keys(),
                "backend": identity.backend,
                "mrenclave": identity.mrenclave,
            },
            "terms": terms.hex(),
            "approvals": [a.hex() for a in approvals],
            "manifests": [m.hex() for m in manifests],
            "accepted_at": accepted_at,
        }
    ).encode()


class JobProcess:
    """The parent's view of one job running in its own process."""

    def __init__(self, child: process.ChildHandle, job_id: str) -> None:
        self._child = child
        self.job_id = job_id

    @classmethod
    def start(
        cls,
        identity: EnclaveIdentity,
        job: jobs.AcceptedJob,
        approvals: list[bytes],
        manifests: list[bytes],
        accepted_at: float,
    ) -> JobProcess:
        """Spawn the job's process and hand it the keys and the accepted job's documents."""
        payload = _payload(
            identity, job.terms_envelope.to_bytes(), approvals, manifests, accepted_at
        )
        job_id = job.terms.job_id
        name = (job_id if job_id.startswith("job") else f"job-{job_id}")[:128]
        try:
            child = process.spawn(TARGET, payload, name=name)
        except process.ChildError as exc:
            raise _translate(exc) from None
        log.info("job %s runs in process %d", job.terms.job_id, child.pid)
        return cls(child, job.terms.job_id)

    @property
    def pid(self) -> int:
        return self._child.pid

    def send_chunk(self, dataset_id: str, data: bytes) -> None:
        try:
            self._child.send("chunk", _named(dataset_id, data))
        except process.ChildError as exc:
            raise _translate(exc) from None

    def progress(self) -> Iterator[jobs.JobProgress]:
        """The progress the job reported so far (while its data arrives), without waiting."""
        try:
            while True:
                try:
                    message = self._child.recv(timeout=0)
                except TimeoutError:
                    return
                if message is None or message.kind != "progress":
                    kind = "end" if message is None else message.kind
                    raise FormatError(f"the job process sent {kind!r} before all its data")
                yield _progress(message.body)
        except process.ChildError as exc:
            raise _translate(exc) from None

    def results(self) -> Iterator[jobs.JobProgress | jobs.ReleasedOutput | SealedModel | bytes]:
        """Progress, output pieces (consecutive pieces of one output), the sealed model (its
        reader must call :meth:`model_stored` before it reads on), then the statement."""
        model = bytearray()
        try:
            self._child.send("end")
            for message in self._child.messages():
                if message.kind == "progress":
                    yield _progress(message.body)
                elif message.kind == "output":
                    name, data = _unnamed(message.body, "job output")
                    yield jobs.ReleasedOutput(name, bytes(data))
                elif message.kind == "model":
                    model += message.body
                elif message.kind == "model-end":
                    schema = ModelSchema.from_dict(canonical.loads(message.body, "model schema"))
                    yield SealedModel(bytes(model), schema)
                    model = bytearray()
                elif message.kind == "statement":
                    yield message.body
                else:
                    raise FormatError(f"the job process sent an unknown {message.kind!r} message")
        except process.ChildError as exc:
            raise _translate(exc) from None

    def model_stored(self) -> None:
        """Tell the job its sealed model is stored: it may now sign the result statement."""
        try:
            self._child.send("model-stored")
        except process.ChildError as exc:
            raise _translate(exc) from None

    def kill(self) -> None:
        """Stop the job now (the call was cancelled). Safe from any thread."""
        self._child.kill()

    def kill_and_reap(self, timeout: float = 10.0) -> None:
        """Stop the job and return once its process has ended, so it writes nothing more
        (a withdrawal destroys its checkpoint next). Safe from any thread."""
        self._child.kill()
        self._child.wait(timeout)

    def close(self) -> None:
        self._child.close()

    def __enter__(self) -> JobProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _progress(body: bytes) -> jobs.JobProgress:
    report = canonical.loads(body, "job progress")
    return jobs.JobProgress(str(report.get("kind")), str(report.get("text")))


def _translate(exc: process.ChildError) -> DetenteError:
    if isinstance(exc, process.ChildLimitError):
        return exc  # already says which limit and what to do
    if isinstance(exc, process.ChildCrashedError) and exc.ended is not None:
        log.warning("job process crashed: %s", exc)
        ended = exc.ended
        return JobCrashedError(
            f"the job process crashed: {ended.describe()}, peak memory "
            f"{ended.peak_rss_bytes / 2**20:.1f} MiB; the worker is still serving: run the job "
            "again, and if it crashes again ask the enclave operator to check logs/"
        )
    log.warning("job process failed: %s", exc)
    return JobFailedError(
        "the job process failed with an internal error; the enclave operator finds the "
        "details in logs/ (job ids and stages only)"
    )


# --- in the job process ----------------------------------------------------------------


def _decode_payload(payload: bytes) -> tuple[EnclaveIdentity, dict[str, Any]]:
    doc = canonical.loads(payload, "job payload")
    if doc.get("version") != PAYLOAD_VERSION:
        raise FormatError(f"job payload version {doc.get('version')!r} is not {PAYLOAD_VERSION}")
    sent = canonical.field(doc, "identity", dict, "job payload")
    identity = EnclaveIdentity.from_private_keys(
        sent.get("keys"),
        canonical.field(sent, "backend", str, "job payload identity"),
        canonical.field(sent, "mrenclave", str, "job payload identity"),
        "job payload keys",
    )
    return identity, doc


class MountCheckpoints:
    """Checkpoints in an encrypted mount (libos.efs): the host sees neither names nor bytes,
    and a changed, swapped or rolled-back checkpoint fails to read."""

    def __init__(self, fs: EncryptedFS) -> None:
        self._fs = fs

    def read(self, name: str) -> bytes | None:
        return self._fs.read_bytes(name) if self._fs.is_file(name) else None

    def write(self, name: str, data: bytes) -> None:
        self._fs.write_bytes(name, data)


def _environment(channel: process.Channel) -> jobs.JobEnvironment:
    """What this enclave's LibOS offers the job: memory limit, peak memory, checkpoints.

    Checkpoints go to the runtime's default encrypted mount, the first of the
    image's config (``/data`` by default). An image without mounts, or a
    backend that refuses libos.efs mounts (gramine: no rollback counter,
    docs/libos.md), trains without them. A mount that fails its integrity
    checks is not skipped: the job fails.
    """
    from libos import runtime

    def emit(progress: jobs.JobProgress) -> None:
        channel.send("progress", canonical.dumps({"kind": progress.kind, "text": progress.text}))

    def seal_model(model: SealedModel) -> None:
        data = model.raw
        for start in range(0, max(len(data), 1), CHUNK_SIZE):
            channel.send("model", data[start : start + CHUNK_SIZE])
        channel.send("model-end", canonical.dumps(model.schema.to_dict()))
        reply = channel.recv()
        if reply.kind != "model-stored":
            raise FormatError(f"the worker answered a sealed model with {reply.kind!r}")

    fs = runtime.current().default_mount()
    if fs is None:
        log.info("training without checkpoints: no usable encrypted mount")
    checkpoints = MountCheckpoints(fs) if fs is not None else None
    return jobs.JobEnvironment(emit=emit, checkpoints=checkpoints, seal_model=seal_model)


# What a job imports, started on a thread as the job process starts, while its data arrives.
_PRELOADED = ("numpy", "pyarrow", "pyarrow.compute", "pyarrow.ipc", "xgboost")


def _preload() -> None:
    import importlib

    for name in _PRELOADED:
        try:
            importlib.import_module(name)
        except Exception:  # the job's own import reports it, in context
            log.warning("preloading %s failed", name)
            return


def _chunks(channel: process.Channel) -> Iterator[tuple[str, memoryview]]:
    """The data sets' chunks as the worker forwards them, until ``end``."""
    while True:
        message = channel.recv()
        if message.kind == "end":
            return
        if message.kind != "chunk":
            raise FormatError(f"the worker sent an unknown {message.kind!r} message")
        yield _unnamed(message.body, "data chunk")


def _withdrawn(rt: Any) -> frozenset[str]:
    """The withdrawn list of the runtime's default mount (enclave_worker.withdrawals)."""
    from enclave_worker.withdrawals import Withdrawals

    fs = rt.default_mount()
    return Withdrawals(fs).digests() if fs is not None else frozenset()


def job_main(channel: process.Channel, payload: bytes) -> None:
    """The job process: accept the job again, receive its data, run it, stream the results."""
    import threading

    from libos import runtime

    threading.Thread(target=_preload, name="preload", daemon=True).start()
    rt = runtime.current()
    identity, doc = _decode_payload(payload)
    if identity.mrenclave != rt.mrenclave:
        raise IntegrityError("the job payload names another enclave measurement")
    job = jobs.accept(
        identity,
        canonical.unhex(doc.get("terms"), "job terms"),
        [canonical.unhex(a, "approval") for a in canonical.field(doc, "approvals", list, "job")],
        [canonical.unhex(m, "manifest") for m in canonical.field(doc, "manifests", list, "job")],
        now=float(canonical.field(doc, "accepted_at", float, "job payload")),
        withdrawn=_withdrawn(rt),
    )
    del payload, doc
    for item in jobs.run(identity, job, _chunks(channel), _environment(channel)):
        if isinstance(item, jobs.JobProgress):
            channel.send("progress", canonical.dumps({"kind": item.kind, "text": item.text}))
        elif isinstance(item, jobs.ReleasedOutput):
            data = item.ciphertext
            for start in range(0, max(len(data), 1), CHUNK_SIZE):
                channel.send("output", _named(item.name, data[start : start + CHUNK_SIZE]))
        else:
            channel.send("statement", item)
