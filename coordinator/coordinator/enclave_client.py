"""The coordinator's gRPC client of the enclave (its host-side edge).

Only this module and :mod:`coordinator.servicer` touch ``_pb2`` types; the
rest of the coordinator works with the plain values defined here. The
coordinator relays: it never looks inside evidence, specs or outputs.

Every call goes over RA-TLS (protocols/SPEC.md §13): before a channel is
opened the client reads the enclave's certificate, verifies the evidence in
it against the coordinator's enclave policy, and only then opens a gRPC
channel that accepts exactly that certificate. So the coordinator sends job
data only to an enclave of an allowed measurement, and a host that swaps the
worker for another process is refused with the rule that failed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from protocols import grpc_status, ratls, tls
from protocols.attestation import VerifiedEnclave
from protocols.errors import AttestationError, DetenteError, EnclaveUnavailable, FormatError
from protocols.grpc_status import CHANNEL_OPTIONS
from protocols.policy import AttestationPolicy
from protocols.wire.v1 import enclave_pb2, enclave_pb2_grpc

log = logging.getLogger(__name__)

EVIDENCE_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
# Longest a relayed query or retirement may take when the party set no deadline.
PREDICT_TIMEOUT = 900.0
RETIRE_TIMEOUT = 60.0
WITHDRAW_TIMEOUT = 60.0
# Queries share one verified, pinned channel (see _QueryChannel), verified again at
# least this often.
QUERY_CHANNEL_SECONDS = 300.0


@dataclass(frozen=True)
class RelayedEvidence:
    """The enclave's evidence for a party's nonce, relayed unread (the party verifies it)."""

    identity: bytes
    quote: bytes
    backend: str


@dataclass(frozen=True)
class JobSpec:
    """What starts a job on the enclave: the signed terms, approvals and manifests."""

    terms: bytes
    approvals: list[bytes]
    manifests: list[bytes]


@dataclass(frozen=True)
class EnclaveProgress:
    """A progress event the enclave streams while a job runs (kept in the job's events)."""

    kind: str
    text: str


@dataclass(frozen=True)
class OutputPiece:
    """A piece of an encrypted output's bytes, in order, pieces of one output in a row."""

    name: str
    data: bytes


@dataclass(frozen=True)
class SignedResult:
    """The bytes of the enclave's signed result statement (protocols.documents.ResultStatement)."""

    data: bytes


EnclaveMessage = EnclaveProgress | OutputPiece | SignedResult


@dataclass(frozen=True)
class AnswerPiece:
    """A piece of a sealed prediction answer, relayed unread in order."""

    data: bytes


@dataclass(frozen=True)
class SignedAnswer:
    """The enclave's signed prediction answer (protocols.documents.PredictionAnswer), last."""

    data: bytes


PredictMessage = AnswerPiece | SignedAnswer

# The name the worker's gRPC health service knows its Enclave service by.
HEALTH_SERVICE = enclave_pb2.DESCRIPTOR.services_by_name["Enclave"].full_name
STATUS_TIMEOUT = 5.0


@dataclass(frozen=True)
class WorkerStatus:
    """A worker's answer to a health check and GetStatus (public facts only)."""

    serving: bool  # the health service says SERVING for the Enclave service
    slots: int
    busy: int
    job_ids: list[str]
    backend: str
    mrenclave: str
    draining: bool


@dataclass(frozen=True)
class WithdrawalReceipt:
    """What a worker destroyed for a withdrawn data set (counts and ids only)."""

    already: bool
    checkpoints_removed: int
    models_retired: list[str]
    jobs_stopped: int


class EnclaveCallError(EnclaveUnavailable):
    """The enclave answered a call with a gRPC error (status code and details kept, and
    the catalogue class the enclave named, if it named one: protocols.grpc_status)."""

    def __init__(self, code: str, details: str, error: str = "") -> None:
        super().__init__(f"enclave returned {code}: {details}")
        self.code = code
        self.details = details
        self.error = error


class EnclaveNotTrusted(AttestationError):
    """The enclave's RA-TLS certificate failed the coordinator's enclave policy."""


def _call_error(exc: grpc.RpcError) -> EnclaveCallError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else None
    trailers: Any = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    kind = grpc_status.error_class(code, trailers)
    name = code.name if code is not None else "UNKNOWN"
    error = kind.__name__ if kind is not DetenteError else ""
    return EnclaveCallError(name, str(details or "no details"), error)


def _relayed_error(exc: grpc.RpcError) -> DetenteError:
    """The enclave's refusal as the error class it named (protocols.grpc_status), with its
    message unchanged, so a party sees BudgetExhausted, ModelRetired or DatasetError as such.

    A status the enclave did not choose from the catalogue (a transport failure, a
    crash) stays an :class:`EnclaveCallError` (UNAVAILABLE) naming the code.
    """
    code = exc.code() if hasattr(exc, "code") else None
    trailers: Any = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    names = [value for key, value in trailers or () if key == grpc_status.ERROR_TRAILER]
    kind = grpc_status.error_class(code, trailers)
    if kind is DetenteError and DetenteError.__name__ not in names:
        return _call_error(exc)
    details = exc.details() if hasattr(exc, "details") else None
    return kind(str(details or "the enclave refused the call"))


@dataclass(eq=False)
class _Shared:
    channel: grpc.Channel
    until: float  # time.monotonic() after which no new call uses it
    users: int = 0
    stale: bool = False
    connected: bool = False


class _QueryChannel:
    """One verified, pinned channel that queries share.

    Verifying the enclave's certificate and opening a TLS channel costs more
    than a small query (a TLS handshake to read the certificate, the quote
    check, a second handshake). Reusing the channel is as safe as verifying
    again: it is pinned to the verified certificate, whose key only the
    attested enclave holds, until it restarts with a new one. So the channel is
    verified again when its connection drops (the enclave may have restarted),
    after a call on it fails as UNAVAILABLE, and at least every
    QUERY_CHANNEL_SECONDS; a channel is closed once its last call ended.
    """

    def __init__(self, open_verified: Callable[[], grpc.Channel]) -> None:
        self._open = open_verified
        self._lock = threading.Lock()
        self._current: _Shared | None = None

    @contextlib.contextmanager
    def use(self) -> Iterator[_Shared]:
        shared = self._acquire()
        try:
            yield shared
        finally:
            with self._lock:
                shared.users -= 1
                self._close_if_done(shared)

    def discard(self, shared: _Shared) -> None:
        """No new call uses ``shared``: the next one verifies the enclave again."""
        with self._lock:
            shared.stale = True
            self._close_if_done(shared)

    def close(self) -> None:
        with self._lock:
            if self._current is not None:
                self._current.stale = True
                self._close_if_done(self._current)

    def _acquire(self) -> _Shared:
        with self._lock:
            shared = self._current
            if shared is None or shared.stale or time.monotonic() >= shared.until:
                if shared is not None:
                    shared.stale = True
                    self._close_if_done(shared)
                shared = _Shared(self._open(), time.monotonic() + QUERY_CHANNEL_SECONDS)
                shared.channel.subscribe(functools.partial(self._watch, shared))
                self._current = shared
            shared.users += 1
            return shared

    def _watch(self, shared: _Shared, state: grpc.ChannelConnectivity) -> None:
        if state == grpc.ChannelConnectivity.READY:
            shared.connected = True
        elif shared.connected:  # the connection dropped: IDLE, TRANSIENT_FAILURE, SHUTDOWN
            shared.stale = True

    def _close_if_done(self, shared: _Shared) -> None:
        if self._current is shared and shared.stale:
            self._current = None
        if shared.users == 0 and shared is not self._current:
            shared.channel.close()


class EnclaveClient:
    """Calls the enclave at ``address`` (HOST:PORT) if its RA-TLS certificate passes ``policy``."""

    def __init__(self, address: str, policy: AttestationPolicy) -> None:
        self.address = address
        self.policy = policy
        self._queries = _QueryChannel(self.channel)
        # The last evidence that passed the policy, and when (time.time()).
        self.last_verified: tuple[VerifiedEnclave, float] | None = None

    def close(self) -> None:
        """Close the channel queries share (calls under way keep it until they end)."""
        self._queries.close()

    def verify(self) -> tuple[bytes, VerifiedEnclave]:
        """Read the enclave's certificate and verify its evidence; nothing else is sent.

        Raises EnclaveCallError (UNAVAILABLE) if the enclave cannot be reached,
        EnclaveNotTrusted naming the failed rule if its certificate is refused.
        """
        try:
            der = tls.peer_certificate(self.address, CONNECT_TIMEOUT)
        except (OSError, FormatError) as exc:
            raise EnclaveCallError(
                "UNAVAILABLE", f"cannot reach the enclave at {self.address} over TLS: {exc}"
            ) from None
        try:
            enclave = ratls.verify_ratls_certificate(der, self.policy)
        except AttestationError as exc:
            log.debug("enclave at %s refused: %s", self.address, exc)
            raise EnclaveNotTrusted(
                f"the coordinator does not trust the enclave at {self.address}: {exc}; the "
                "operator must run an enclave its --enclave-policy allows"
            ) from None
        self.last_verified = (enclave, time.time())
        return der, enclave

    def reattest(self) -> None:
        """The next status check or query verifies the enclave's certificate again."""
        self._queries.close()

    def status(self) -> WorkerStatus:
        """Ask the worker's gRPC health service and its GetStatus, over the shared
        verified channel (verified again after a dropped connection).

        Raises EnclaveCallError (UNAVAILABLE and others) or EnclaveNotTrusted.
        """
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with self._queries.use() as shared:
            try:
                health = health_pb2_grpc.HealthStub(shared.channel).Check(
                    health_pb2.HealthCheckRequest(service=HEALTH_SERVICE), timeout=STATUS_TIMEOUT
                )
                reply = enclave_pb2_grpc.EnclaveStub(shared.channel).GetStatus(
                    enclave_pb2.WorkerStatusRequest(), timeout=STATUS_TIMEOUT
                )
            except grpc.RpcError as exc:
                self._queries.discard(shared)
                raise _call_error(exc) from None
        return WorkerStatus(
            serving=health.status == health_pb2.HealthCheckResponse.SERVING,
            slots=int(reply.slots),
            busy=int(reply.busy),
            job_ids=[str(j) for j in reply.job_ids],
            backend=str(reply.backend),
            mrenclave=str(reply.mrenclave),
            draining=bool(reply.draining),
        )

    def channel(self) -> grpc.Channel:
        """A channel pinned to the certificate just verified (no application byte before)."""
        der, _ = self.verify()
        return tls.pinned_channel(
            self.address, tls.load_certificate(der, "enclave certificate"), CHANNEL_OPTIONS
        )

    def get_evidence(self, nonce: bytes) -> RelayedEvidence:
        with self.channel() as channel:
            stub = enclave_pb2_grpc.EnclaveStub(channel)
            try:
                reply = stub.GetEvidence(
                    enclave_pb2.EvidenceRequest(nonce=nonce), timeout=EVIDENCE_TIMEOUT
                )
            except grpc.RpcError as exc:
                raise _call_error(exc) from None
        return RelayedEvidence(bytes(reply.identity), bytes(reply.quote), str(reply.backend))

    def run_job(
        self,
        spec: JobSpec,
        datasets: Iterable[tuple[str, Iterable[bytes]]],
        on_start: Callable[[Callable[[], object]], None] | None = None,
    ) -> Iterator[EnclaveMessage]:
        """Send the spec then each data set's chunks; yield what the enclave streams back.

        Raises EnclaveCallError if the call fails at any point, or the error
        that stopped reading a data set (for example a corrupted blob).
        ``on_start`` receives a function that cancels the call (used at shutdown).
        """

        failure: list[BaseException] = []

        def requests() -> Iterator[enclave_pb2.RunJobRequest]:
            try:
                yield from _requests()
            except Exception as exc:
                # gRPC would only report CANCELLED; keep the real reason.
                failure.append(exc)
                raise

        def _requests() -> Iterator[enclave_pb2.RunJobRequest]:
            yield enclave_pb2.RunJobRequest(
                spec=enclave_pb2.JobSpec(
                    terms=spec.terms, approvals=spec.approvals, manifests=spec.manifests
                )
            )
            for dataset_id, chunks in datasets:
                for data in chunks:
                    yield enclave_pb2.RunJobRequest(
                        chunk=enclave_pb2.DatasetChunk(dataset_id=dataset_id, data=data)
                    )

        with self.channel() as channel:
            stub = enclave_pb2_grpc.EnclaveStub(channel)
            try:
                call = stub.RunJob(requests())
                if on_start is not None:
                    on_start(call.cancel)
                for reply in call:
                    part = reply.WhichOneof("part")
                    if part == "progress":
                        yield EnclaveProgress(reply.progress.kind, reply.progress.text)
                    elif part == "output":
                        yield OutputPiece(reply.output.name, bytes(reply.output.data))
                    elif part == "result_statement":
                        yield SignedResult(bytes(reply.result_statement))
            except grpc.RpcError as exc:
                if failure:
                    raise failure[0] from None
                raise _call_error(exc) from None

    def predict(
        self,
        query: bytes,
        chunks: Iterable[bytes],
        on_start: Callable[[Callable[[], object]], object] | None = None,
        timeout: float | None = None,
    ) -> Iterator[PredictMessage]:
        """Send the signed query then the sealed rows; yield the sealed answer's pieces
        and, last, the signed answer, as the enclave streams them.

        Raises the error class the enclave refused the query with (see
        :func:`_relayed_error`), or the error that stopped reading ``chunks``.
        ``on_start`` receives a function that cancels the call.
        """
        failure: list[BaseException] = []

        def requests() -> Iterator[enclave_pb2.PredictRequest]:
            try:
                yield enclave_pb2.PredictRequest(query=query)
                for data in chunks:
                    yield enclave_pb2.PredictRequest(chunk=data)
            except Exception as exc:
                failure.append(exc)  # gRPC would only report CANCELLED
                raise

        with self._queries.use() as shared:
            stub = enclave_pb2_grpc.EnclaveStub(shared.channel)
            try:
                # The party's own deadline if it set one, never longer than PREDICT_TIMEOUT
                # (without one, gRPC reports the far future).
                limit = PREDICT_TIMEOUT if not timeout else min(timeout, PREDICT_TIMEOUT)
                call = stub.Predict(requests(), timeout=limit)
                if on_start is not None:
                    on_start(call.cancel)
                for reply in call:
                    part = reply.WhichOneof("part")
                    if part == "chunk":
                        yield AnswerPiece(bytes(reply.chunk))
                    elif part == "answer":
                        yield SignedAnswer(bytes(reply.answer))
            except grpc.RpcError as exc:
                if failure:
                    raise failure[0] from None
                if hasattr(exc, "code") and exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self._queries.discard(shared)
                raise _relayed_error(exc) from None

    def retire_model(self, model_id: str, retirements: list[bytes]) -> None:
        """Pass every owner's signed retirement; returns once the enclave destroyed the model.

        Raises the error class the enclave refused with (see :func:`_relayed_error`).
        """
        with self.channel() as channel:
            stub = enclave_pb2_grpc.EnclaveStub(channel)
            try:
                stub.RetireModel(
                    enclave_pb2.RetireModelRequest(model_id=model_id, retirements=retirements),
                    timeout=RETIRE_TIMEOUT,
                )
            except grpc.RpcError as exc:
                raise _relayed_error(exc) from None

    def withdraw_dataset(self, withdrawal: bytes, manifest: bytes) -> WithdrawalReceipt:
        """Pass the owner's signed withdrawal and the manifest it names; returns once the
        enclave recorded it and destroyed what it derived from the data set.

        Raises the error class the enclave refused with (see :func:`_relayed_error`),
        EnclaveCallError (UNAVAILABLE) if it cannot be reached.
        """
        with self.channel() as channel:
            stub = enclave_pb2_grpc.EnclaveStub(channel)
            try:
                reply = stub.WithdrawDataset(
                    enclave_pb2.WithdrawDatasetRequest(withdrawal=withdrawal, manifest=manifest),
                    timeout=WITHDRAW_TIMEOUT,
                )
            except grpc.RpcError as exc:
                raise _relayed_error(exc) from None
        return WithdrawalReceipt(
            bool(reply.already),
            int(reply.checkpoints_removed),
            list(reply.models_retired),
            int(reply.jobs_stopped),
        )
