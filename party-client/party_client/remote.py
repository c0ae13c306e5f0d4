"""The party's channel to the (untrusted) coordinator.

Nothing received here is trusted: evidence, manifests, terms and result
statements are verified by the caller before use. The channel is TLS pinned
to the coordinator certificate the party copied at `detente party init`, and
every request is signed with the party's key (protocols/SPEC.md §14).

This module is the party's gRPC edge: only it touches protobuf; it hands the
rest of the client plain dataclasses of the bytes received.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from cryptography import x509

from party_client.audit import (
    AuditLogRewritten,
    AuditMemory,
    AuditWatch,
    RemoteAuditEntry,
    memory_for,
)
from protocols import grpc_status, tls
from protocols.audit_head import AuditHead, head_from_metadata
from protocols.errors import DetenteError, FormatError, IntegrityError
from protocols.grpc_status import CHANNEL_OPTIONS
from protocols.keys import SigningKey
from protocols.request_auth import RequestSigner, server_time_from_metadata
from protocols.stream import CHUNK_SIZE
from protocols.wire.v1 import coordinator_pb2 as pb
from protocols.wire.v1 import coordinator_pb2_grpc
from protocols.wire.v1 import enclave_pb2 as enclave_pb

if TYPE_CHECKING:
    from party_client.home import PartyHome

T = TypeVar("T")
DIAGNOSE_TIMEOUT = 5.0


@dataclass(frozen=True)
class RemoteParty:
    """A registration as the coordinator lists it (verify ``registration`` before use)."""

    name: str
    signing_key: str
    registration: bytes


@dataclass(frozen=True)
class RemoteDataset:
    """A data set as the coordinator lists it (verify ``manifest`` before use)."""

    dataset_id: str
    owner_key: str
    manifest: bytes
    size: int
    withdrawn_at: int = 0  # ms since the epoch; 0: not withdrawn
    withdrawal: bytes = b""  # the owner's signed withdrawal (verify before use)


@dataclass(frozen=True)
class RemoteDelivery:
    """Whether one enclave worker acknowledged a withdrawal, as the coordinator records it."""

    worker: str
    delivered_at: int  # ms since the epoch; 0: not yet
    attempts: int
    error: str


@dataclass(frozen=True)
class RemoteWithdrawn:
    """The coordinator's answer to a withdrawal: the data set, cancelled jobs, deliveries."""

    dataset: RemoteDataset
    cancelled_jobs: list[str]
    deliveries: list[RemoteDelivery]


@dataclass(frozen=True)
class RemoteUpload:
    """How far a resumable upload is at the coordinator: ``received`` of ``size`` bytes
    acknowledged (written and synced); ``dataset`` once it is complete and checked."""

    upload_id: str
    dataset_id: str
    received: int
    size: int
    expires_at: int  # Unix ms
    dataset: RemoteDataset | None


@dataclass(frozen=True)
class RemoteEvent:
    at: int
    kind: str
    text: str


@dataclass(frozen=True)
class RemoteJob:
    """A job as the coordinator reports it: signed bytes to verify, and its bookkeeping."""

    job_id: str
    state: str
    terms: bytes
    required_approvers: list[str]
    approvals: list[bytes]
    result_statement: bytes
    events: list[RemoteEvent]
    error: str
    proposer: str
    attempts: int
    rejection: bytes = b""  # a data owner's signed rejection (verify before use)


@dataclass(frozen=True)
class RemoteEvidence:
    identity: bytes
    quote: bytes
    backend: str


@dataclass(frozen=True)
class RemoteModelQueries:
    """Queries of a sealed model the coordinator relayed for one querier (its count)."""

    querier: str  # hex signing key
    queries: int
    rows: int


@dataclass(frozen=True)
class RemoteModel:
    """A sealed model as the coordinator records it (verify ``retirements`` before use)."""

    model_id: str
    job_id: str
    state: str  # sealed, retired
    terms_digest: str
    owners: list[str]  # hex keys
    retirements: list[bytes]  # signed model retirements so far
    queries: list[RemoteModelQueries]
    created_at: int
    retired_at: int


@dataclass(frozen=True)
class RemoteAnswer:
    """What the coordinator relayed back for one query: the enclave's signed answer and the
    sealed answer table (verify both before use)."""

    answer: bytes
    ciphertext: bytes


def _party(p: Any) -> RemoteParty:
    return RemoteParty(p.name, p.signing_key, bytes(p.registration))


def _dataset(d: Any) -> RemoteDataset:
    return RemoteDataset(
        d.dataset_id,
        d.owner_key,
        bytes(d.manifest),
        int(d.size),
        int(d.withdrawn_at),
        bytes(d.withdrawal),
    )


def _upload(u: Any) -> RemoteUpload:
    return RemoteUpload(
        u.upload_id,
        u.dataset_id,
        int(u.received),
        int(u.size),
        int(u.expires_at),
        _dataset(u.dataset) if u.HasField("dataset") else None,
    )


def _job(j: Any) -> RemoteJob:
    return RemoteJob(
        job_id=j.job_id,
        state=j.state,
        terms=bytes(j.terms),
        required_approvers=list(j.required_approvers),
        approvals=[bytes(a) for a in j.approvals],
        result_statement=bytes(j.result_statement),
        events=[RemoteEvent(e.at, e.kind, e.text) for e in j.events],
        error=j.error,
        proposer=j.proposer,
        attempts=int(j.attempts),
        rejection=bytes(j.rejection),
    )


def _model(m: Any) -> RemoteModel:
    return RemoteModel(
        model_id=m.model_id,
        job_id=m.job_id,
        state=m.state,
        terms_digest=m.terms_digest,
        owners=list(m.owners),
        retirements=[bytes(r) for r in m.retirements],
        queries=[RemoteModelQueries(q.querier, int(q.queries), int(q.rows)) for q in m.queries],
        created_at=int(m.created_at),
        retired_at=int(m.retired_at),
    )


def _audit_entry(e: Any) -> RemoteAuditEntry:
    return RemoteAuditEntry(e.seq, e.at, e.event, e.subject, e.detail, e.prev_hash, e.hash)


def _pieces(data: bytes) -> Iterator[bytes]:
    """``data`` in pieces of at most ``CHUNK_SIZE`` bytes (one gRPC message each)."""
    view = memoryview(data)
    for start in range(0, len(view), CHUNK_SIZE):
        yield bytes(view[start : start + CHUNK_SIZE])


class CoordinatorError(DetenteError):
    """The coordinator refused a request or could not be reached.

    ``code`` is the gRPC status; ``kind`` the catalogue class the coordinator
    refused with (:func:`protocols.grpc_status.error_class`), for example
    ``NotFound``; a plain ``DetenteError`` when the call never reached it.
    """

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode | None = None,
        kind: type[DetenteError] = DetenteError,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind


def _refused(exc: grpc.RpcError) -> CoordinatorError:
    """The coordinator's own refusal: its message, code and catalogue class."""
    code, trailers = exc.code(), exc.trailing_metadata()
    return CoordinatorError(
        f"coordinator: {exc.details()}",
        code,
        grpc_status.error_class(code, trailers),
    )


class Coordinator:
    """The coordinator at ``address``, reached over TLS pinned to ``certificate``;
    every request is signed with ``signing_key``."""

    def __init__(
        self,
        address: str,
        certificate: x509.Certificate,
        signing_key: SigningKey,
        pinned_at: Path | str = "this party's home",
        timeout: float = 60.0,
        audit_memory: AuditMemory | None = None,
    ) -> None:
        """With ``audit_memory``, each reply's signed audit head is checked against the
        heads this party saw before (party_client.audit) and remembered."""
        self.address = address
        self._certificate = certificate
        self._pinned_at = pinned_at
        self._channel = tls.pinned_channel(address, certificate, CHANNEL_OPTIONS)
        signed = grpc.intercept_channel(self._channel, RequestSigner(signing_key))
        self._stub = coordinator_pb2_grpc.CoordinatorStub(signed)
        self._timeout = timeout
        self.last_head: AuditHead | None = None
        # The coordinator's clock (Unix ms) as its last reply, or refusal, stated it, and
        # this machine's clock when that reply came (`detente party doctor`).
        self.last_clock: tuple[int, int] | None = None
        self._audit = (
            AuditWatch(audit_memory, certificate, self._entry_unwatched)
            if audit_memory is not None
            else None
        )

    @classmethod
    def for_home(cls, home: PartyHome, timeout: float = 60.0) -> Coordinator:
        """The coordinator named in the party's config, with its pinned certificate and key."""
        return cls(
            home.config()["coordinator"],
            home.coordinator_certificate(),
            home.signing_key(),
            home.coordinator_cert_path,
            timeout,
            memory_for(home.root, home.coordinator_certificate()),
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def timeout(self) -> float:
        """Seconds a call may take (an upload may be given longer)."""
        return self._timeout

    def _call(
        self, fn: Callable[..., T], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> T:
        try:
            with_call = getattr(fn, "with_call", None)
            if with_call is None:  # a stream reader: it reports the head itself
                return fn(*args, timeout=timeout or self._timeout, **kwargs)
            reply, call = with_call(*args, timeout=timeout or self._timeout, **kwargs)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                raise self._diagnose(exc) from None
            self._clock(exc.trailing_metadata())
            raise _refused(exc) from None
        self._clock(call.trailing_metadata())
        self._saw(call.trailing_metadata())
        return reply

    def _clock(self, trailers: Any) -> None:
        at = server_time_from_metadata(trailers)
        if at is not None:
            self.last_clock = (at, int(time.time() * 1000))

    def _saw(self, trailers: Any) -> None:
        """Check the signed audit head a reply carried (party_client.audit)."""
        head = head_from_metadata(trailers)
        if head is not None:
            self.last_head = head
        if self._audit is None:
            return
        if head is None:
            verified, seen = self._audit.memory.load()
            if verified is not None or seen is not None:
                raise AuditLogRewritten(
                    "the coordinator's reply carried no signed audit head, though this party "
                    f"saw its log signed at entry {max(h.seq for h in (verified, seen) if h)}: "
                    "its log may have been emptied; run `detente party audit`"
                )
            return
        self._audit.saw(head)

    def _entry_unwatched(self, seq: int) -> RemoteAuditEntry | None:
        """Audit entry ``seq`` (None if the log has none), without checking the reply's head
        (the check itself asks for it)."""
        try:
            reply = self._stub.ListAuditEntries(
                pb.ListAuditEntriesRequest(first=seq, last=seq), timeout=self._timeout
            )
        except grpc.RpcError as exc:
            raise _refused(exc) from None
        entries = [_audit_entry(e) for e in reply.entries]
        return entries[0] if entries and entries[0].seq == seq else None

    def audit_entries(self, first: int, last: int = 0) -> list[RemoteAuditEntry]:
        """Audit entries ``first``..``last`` (0: to the end; a reply holds at most 1000)."""
        reply = self._call(
            self._stub.ListAuditEntries, pb.ListAuditEntriesRequest(first=first, last=last)
        )
        return [_audit_entry(e) for e in reply.entries]

    def _diagnose(self, exc: grpc.RpcError) -> CoordinatorError:
        """Why a call was UNAVAILABLE: no server, a server with another certificate, or
        the coordinator's own answer (for example, its enclave is down)."""
        code = grpc.StatusCode.UNAVAILABLE
        try:
            presented = tls.peer_certificate(self.address, DIAGNOSE_TIMEOUT)
        except (OSError, FormatError):
            return CoordinatorError(
                f"cannot reach the coordinator at {self.address}: is it running?", code
            )
        if presented != tls.certificate_der(self._certificate):
            try:
                shown = tls.certificate_sha256(tls.load_certificate(presented, "certificate"))
            except FormatError:
                shown = "(not a certificate)"
            return CoordinatorError(
                f"the coordinator's TLS certificate is not the one pinned in {self._pinned_at}: "
                f"{self.address} presents SHA-256 {shown[:16]}…, the pinned one is "
                f"{tls.certificate_sha256(self._certificate)[:16]}…. Do not proceed unless the "
                "coordinator's operator confirms a new certificate; then pin it with "
                "`detente party init --coordinator-cert FILE`",
                code,
            )
        return _refused(exc)

    def register(self, registration: bytes, enrollment_token: str = "") -> RemoteParty:
        return _party(
            self._call(
                self._stub.RegisterParty,
                pb.RegisterPartyRequest(
                    registration=registration, enrollment_token=enrollment_token
                ),
            )
        )

    def parties(self) -> list[RemoteParty]:
        reply = self._call(self._stub.ListParties, pb.ListPartiesRequest())
        return [_party(p) for p in reply.parties]

    def evidence(self, nonce: bytes) -> RemoteEvidence:
        reply = self._call(self._stub.GetEvidence, pb.GetEvidenceRequest(nonce=nonce))
        return RemoteEvidence(bytes(reply.identity), bytes(reply.quote), reply.backend)

    def begin_upload(self, manifest: bytes) -> RemoteUpload:
        """Begin the upload of the data set ``manifest`` signs, or find it again: how many
        bytes the coordinator already holds (its data set, if complete). The one-shot
        ``UploadDataset`` call is not used: every upload is resumable."""
        return _upload(self._call(self._stub.BeginUpload, pb.BeginUploadRequest(manifest=manifest)))

    def send_upload(
        self,
        upload_id: str,
        offset: int,
        pieces: Iterable[bytes],
        timeout: float | None = None,
    ) -> RemoteUpload:
        """Stream ciphertext ``pieces`` (at most ``CHUNK_SIZE`` bytes each) from ``offset``;
        the coordinator completes the data set at its last byte."""

        def messages() -> Iterator[Any]:
            yield pb.SendUploadRequest(start=pb.UploadStart(upload_id=upload_id, offset=offset))
            for piece in pieces:
                if len(piece) > CHUNK_SIZE:
                    raise ValueError(f"an upload piece is at most {CHUNK_SIZE} bytes")
                yield pb.SendUploadRequest(ciphertext=piece)

        return _upload(self._call(self._stub.SendUpload, messages(), timeout=timeout))

    def datasets(self) -> list[RemoteDataset]:
        reply = self._call(self._stub.ListDatasets, pb.ListDatasetsRequest())
        return [_dataset(d) for d in reply.datasets]

    def dataset(self, dataset_id: str) -> RemoteDataset:
        return _dataset(
            self._call(self._stub.GetDataset, pb.GetDatasetRequest(dataset_id=dataset_id))
        )

    def withdraw_dataset(self, dataset_id: str, withdrawal: bytes) -> RemoteWithdrawn:
        reply = self._call(
            self._stub.WithdrawDataset,
            pb.CoordinatorWithdrawDatasetRequest(dataset_id=dataset_id, withdrawal=withdrawal),
        )
        return RemoteWithdrawn(
            _dataset(reply.dataset),
            list(reply.cancelled_jobs),
            [
                RemoteDelivery(d.worker, int(d.delivered_at), int(d.attempts), d.error)
                for d in reply.deliveries
            ],
        )

    def propose(self, terms: bytes) -> RemoteJob:
        return _job(self._call(self._stub.ProposeJob, pb.ProposeJobRequest(terms=terms)))

    def approve(self, job_id: str, approval: bytes) -> RemoteJob:
        return _job(
            self._call(
                self._stub.ApproveJob, pb.ApproveJobRequest(job_id=job_id, approval=approval)
            )
        )

    def job(self, job_id: str) -> RemoteJob:
        return _job(self._call(self._stub.GetJob, pb.GetJobRequest(job_id=job_id)))

    def jobs(self) -> list[RemoteJob]:
        return [_job(j) for j in self._call(self._stub.ListJobs, pb.ListJobsRequest()).jobs]

    def reject(self, job_id: str, rejection: bytes) -> RemoteJob:
        return _job(
            self._call(
                self._stub.RejectJob, pb.RejectJobRequest(job_id=job_id, rejection=rejection)
            )
        )

    def cancel(self, job_id: str, reason: str) -> RemoteJob:
        return _job(
            self._call(self._stub.CancelJob, pb.CancelJobRequest(job_id=job_id, reason=reason))
        )

    def retry(self, job_id: str) -> RemoteJob:
        return _job(self._call(self._stub.RetryJob, pb.RetryJobRequest(job_id=job_id)))

    def fetch_output(self, job_id: str, name: str) -> bytes:
        def read() -> bytes:
            chunks = self._stub.FetchOutput(
                pb.FetchOutputRequest(job_id=job_id, name=name), timeout=self._timeout
            )
            data = b"".join(c.data for c in chunks)
            self._saw(chunks.trailing_metadata())
            return data

        return self._call(lambda timeout: read())

    # -- sealed models (docs/protocol.md §7) ------------------------------------------

    def model(self, model_id: str) -> RemoteModel:
        return _model(self._call(self._stub.GetModel, pb.GetModelRequest(model_id=model_id)))

    def models(self) -> list[RemoteModel]:
        reply = self._call(self._stub.ListModels, pb.ListModelsRequest())
        return [_model(m) for m in reply.models]

    def retire_model(self, model_id: str, retirement: bytes) -> RemoteModel:
        return _model(
            self._call(
                self._stub.RetireModel,
                pb.CoordinatorRetireModelRequest(model_id=model_id, retirement=retirement),
            )
        )

    def predict(
        self,
        query: bytes,
        ciphertext: bytes,
        timeout: float | None = None,
        sent: Callable[[int], None] | None = None,
    ) -> RemoteAnswer:
        """Send a signed query, then its sealed rows in ``CHUNK_SIZE`` pieces; return the
        answer the enclave streams back (its sealed table, then its signed answer, last).

        ``sent``, if given, is called with the ciphertext bytes sent so far (on the
        thread that feeds gRPC).
        """

        def messages() -> Iterator[Any]:
            yield enclave_pb.PredictRequest(query=query)
            done = 0
            for piece in _pieces(ciphertext):
                yield enclave_pb.PredictRequest(chunk=piece)
                done += len(piece)
                if sent is not None:
                    sent(done)

        def exchange(timeout: float) -> RemoteAnswer:
            pieces: list[bytes] = []
            answer: bytes | None = None
            replies = self._stub.Predict(messages(), timeout=timeout)
            for reply in replies:
                if answer is not None:
                    raise IntegrityError(
                        "the coordinator sent more after the enclave's signed answer: refused"
                    )
                if reply.WhichOneof("part") == "answer":
                    answer = bytes(reply.answer)
                else:
                    pieces.append(bytes(reply.chunk))
            if answer is None:
                raise IntegrityError(
                    "the coordinator ended the answer without the enclave's signed answer: "
                    "nothing was written; query again"
                )
            self._saw(replies.trailing_metadata())
            return RemoteAnswer(answer, b"".join(pieces))

        return self._call(exchange, timeout=timeout)


@contextmanager
def connected(home: PartyHome, remote: Coordinator | None = None) -> Iterator[Coordinator]:
    """``remote`` if given (left open: its owner, such as a :class:`party_client.Party`,
    closes it), or a new connection to the home's coordinator, closed on exit."""
    if remote is not None:
        yield remote
        return
    with Coordinator.for_home(home) as opened:
        yield opened
