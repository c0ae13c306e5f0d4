"""The thin gRPC edge of the coordinator: decode, call the handler, map errors.

The status codes are the API (the catalogue in :mod:`protocols.grpc_status`).
Expected failures carry the error's own message, which says what went wrong
and what to do; anything unexpected is logged with its traceback and the
client only sees INTERNAL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeVar

import grpc

from coordinator.auth import DatabaseNonces, RequestAuthInterceptor, caller_of
from coordinator.enclave_client import AnswerPiece
from coordinator.handler import CoordinatorHandler
from coordinator.handler.uploads import UploadState
from coordinator.store import (
    CoordinatorStore,
    DatasetRecord,
    JobRecord,
    ModelRecord,
    PartyRecord,
)
from protocols import canonical, grpc_status
from protocols.audit_head import TRAILER as AUDIT_HEAD_TRAILER
from protocols.errors import DetenteError, FormatError
from protocols.statements import Envelope
from protocols.stream import CHUNK_SIZE
from protocols.wire.v1 import coordinator_pb2, coordinator_pb2_grpc, enclave_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

INTERNAL_MESSAGE = "internal error, see coordinator log"


def _abort(context: grpc.ServicerContext, method: str, exc: BaseException) -> NoReturn:
    if not isinstance(exc, DetenteError):
        log.error("%s failed unexpectedly", method, exc_info=exc)
        context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
        raise AssertionError("context.abort returned")  # pragma: no cover
    log.info("%s refused: %s (%s)", method, grpc_status.code_for(exc).name, type(exc).__name__)
    grpc_status.abort(context, exc)


def _call(context: grpc.ServicerContext, method: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except Exception as exc:
        _abort(context, method, exc)


# --------------------------------------------------------------------------- conversions


def _party_pb(p: PartyRecord) -> coordinator_pb2.Party:
    return coordinator_pb2.Party(
        name=p.name,
        signing_key=p.signing_key,
        hpke_key=p.hpke_key,
        registered_at=p.registered_at,
        registration=p.registration,
    )


def _upload_pb(u: UploadState) -> coordinator_pb2.UploadStatus:
    return coordinator_pb2.UploadStatus(
        upload_id=u.upload_id,
        dataset_id=u.dataset_id,
        received=u.received,
        size=u.size,
        expires_at=u.expires_at,
        dataset=_dataset_pb(u.dataset) if u.dataset is not None else None,
    )


def _dataset_pb(d: DatasetRecord) -> coordinator_pb2.Dataset:
    return coordinator_pb2.Dataset(
        dataset_id=d.dataset_id,
        owner_key=d.owner_key,
        manifest_digest=d.manifest_digest,
        manifest=d.manifest,
        blob_sha256=d.blob_sha256,
        size=d.size,
        created_at=d.created_at,
        withdrawn_at=d.withdrawn_at or 0,
        withdrawal=d.withdrawal or b"",
    )


def _job_pb(j: JobRecord) -> coordinator_pb2.Job:
    return coordinator_pb2.Job(
        job_id=j.job_id,
        state=j.state,
        terms=j.terms,
        terms_digest=j.terms_digest,
        required_approvers=j.required_approvers,
        approvals=[a.envelope for a in j.approvals],
        result_statement=j.result_statement or b"",
        outputs=[
            coordinator_pb2.Output(name=o.name, blob_sha256=o.blob_sha256, size=o.size)
            for o in j.outputs
        ],
        events=[coordinator_pb2.JobEvent(at=e.at, kind=e.kind, text=e.text) for e in j.events],
        error=j.error,
        created_at=j.created_at,
        updated_at=j.updated_at,
        proposer=j.proposer,
        attempts=j.attempts,
        rejection=j.rejection or b"",
    )


def _model_pb(m: ModelRecord) -> coordinator_pb2.Model:
    return coordinator_pb2.Model(
        model_id=m.model_id,
        job_id=m.job_id,
        state=m.state,
        terms_digest=m.terms_digest,
        owners=m.owners,
        retirements=[r.envelope for r in m.retirements],
        queries=[
            coordinator_pb2.ModelQueries(querier=q.querier, queries=q.queries, rows=q.rows)
            for q in m.queries
        ],
        created_at=m.created_at,
        retired_at=m.retired_at or 0,
    )


def _cancel_with(context: grpc.ServicerContext) -> Callable[[Callable[[], object]], None]:
    """Cancel the relayed enclave call when this call ends: a party hanging up ends it too."""

    def on_start(cancel: Callable[[], object]) -> None:
        def stop() -> None:
            cancel()

        context.add_callback(stop)

    return on_start


def _query_rows(requests: Iterator[enclave_pb2.PredictRequest]) -> Iterator[bytes]:
    for request in requests:
        if request.WhichOneof("part") != "chunk":
            raise FormatError("a prediction request carries one query, first, then rows only")
        yield bytes(request.chunk)


def _ciphertext(requests: Iterator[coordinator_pb2.UploadDatasetRequest]) -> Iterator[bytes]:
    for request in requests:
        if request.WhichOneof("part") != "ciphertext":
            raise FormatError("an upload carries one manifest, first, then ciphertext only")
        yield bytes(request.ciphertext)


def _upload_ciphertext(requests: Iterator[coordinator_pb2.SendUploadRequest]) -> Iterator[bytes]:
    for request in requests:
        if request.WhichOneof("part") != "ciphertext":
            raise FormatError("an upload stream carries one start, first, then ciphertext only")
        yield bytes(request.ciphertext)


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, handler: CoordinatorHandler) -> None:
        self.handler = handler

    def RegisterParty(
        self, request: coordinator_pb2.RegisterPartyRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.Party:
        registration, token = request.registration, request.enrollment_token
        return _party_pb(
            _call(
                context, "RegisterParty", lambda: self.handler.register_party(registration, token)
            )
        )

    def ListParties(
        self, request: coordinator_pb2.ListPartiesRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.ListPartiesResponse:
        parties = _call(
            context, "ListParties", lambda: self.handler.list_parties(caller_of(context))
        )
        return coordinator_pb2.ListPartiesResponse(parties=[_party_pb(p) for p in parties])

    def GetEvidence(
        self, request: coordinator_pb2.GetEvidenceRequest, context: grpc.ServicerContext
    ) -> enclave_pb2.Evidence:
        ev = _call(context, "GetEvidence", lambda: self.handler.get_evidence(request.nonce))
        return enclave_pb2.Evidence(identity=ev.identity, quote=ev.quote, backend=ev.backend)

    def UploadDataset(
        self,
        request_iterator: Iterator[coordinator_pb2.UploadDatasetRequest],
        context: grpc.ServicerContext,
    ) -> coordinator_pb2.Dataset:
        def upload() -> DatasetRecord:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("part") != "manifest":
                raise FormatError("an upload must start with the signed dataset manifest")
            return self.handler.upload_dataset(
                caller_of(context), first.manifest, _ciphertext(request_iterator)
            )

        return _dataset_pb(_call(context, "UploadDataset", upload))

    def BeginUpload(
        self, request: coordinator_pb2.BeginUploadRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.UploadStatus:
        return _upload_pb(
            _call(
                context,
                "BeginUpload",
                lambda: self.handler.begin_upload(caller_of(context), request.manifest),
            )
        )

    def SendUpload(
        self,
        request_iterator: Iterator[coordinator_pb2.SendUploadRequest],
        context: grpc.ServicerContext,
    ) -> coordinator_pb2.UploadStatus:
        def send() -> UploadState:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("part") != "start":
                raise FormatError("an upload stream must start with its upload id and offset")
            return self.handler.send_upload(
                caller_of(context),
                first.start.upload_id,
                first.start.offset,
                _upload_ciphertext(request_iterator),
            )

        return _upload_pb(_call(context, "SendUpload", send))

    def ListDatasets(
        self, request: coordinator_pb2.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.ListDatasetsResponse:
        datasets = _call(
            context, "ListDatasets", lambda: self.handler.list_datasets(caller_of(context))
        )
        return coordinator_pb2.ListDatasetsResponse(datasets=[_dataset_pb(d) for d in datasets])

    def GetDataset(
        self, request: coordinator_pb2.GetDatasetRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.Dataset:
        return _dataset_pb(
            _call(
                context,
                "GetDataset",
                lambda: self.handler.get_dataset(caller_of(context), request.dataset_id),
            )
        )

    def WithdrawDataset(
        self,
        request: coordinator_pb2.CoordinatorWithdrawDatasetRequest,
        context: grpc.ServicerContext,
    ) -> coordinator_pb2.DatasetWithdrawn:
        done = _call(
            context,
            "WithdrawDataset",
            lambda: self.handler.withdraw_dataset(
                caller_of(context), request.dataset_id, request.withdrawal
            ),
        )
        return coordinator_pb2.DatasetWithdrawn(
            dataset=_dataset_pb(done.dataset),
            cancelled_jobs=done.cancelled_jobs,
            deliveries=[
                coordinator_pb2.WorkerDelivery(
                    worker=r.worker,
                    delivered_at=r.delivered_at or 0,
                    attempts=r.attempts,
                    error=r.error,
                )
                for r in done.deliveries
            ],
        )

    def ProposeJob(
        self, request: coordinator_pb2.ProposeJobRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.Job:
        return _job_pb(
            _call(
                context,
                "ProposeJob",
                lambda: self.handler.propose_job(caller_of(context), request.terms),
            )
        )

    def ApproveJob(
        self, request: coordinator_pb2.ApproveJobRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.Job:
        return _job_pb(
            _call(
                context,
                "ApproveJob",
                lambda: self.handler.approve_job(
                    caller_of(context), request.job_id, request.approval
                ),
            )
        )

    def GetJob(
        self, request: coordinator_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.Job:
        return _job_pb(
            _call(
                context, "GetJob", lambda: self.handler.get_job(caller_of(context), request.job_id)
            )
        )

    def ListJobs(
        self, request: coordinator_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.ListJobsResponse:
        jobs = _call(context, "ListJobs", lambda: self.handler.list_jobs(caller_of(context)))
        return coordinator_pb2.ListJobsResponse(jobs=[_job_pb(j) for j in jobs])

    def RejectJob(
        self, request: coordinator_pb2.RejectJobRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.Job:
        return _job_pb(
            _call(
                context,
                "RejectJob",
                lambda: self.handler.reject_job(
                    caller_of(context), request.job_id, request.rejection
                ),
            )
        )

    def CancelJob(
        self, request: coordinator_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.Job:
        return _job_pb(
            _call(
                context,
                "CancelJob",
                lambda: self.handler.cancel_job(caller_of(context), request.job_id, request.reason),
            )
        )

    def RetryJob(
        self, request: coordinator_pb2.RetryJobRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.Job:
        return _job_pb(
            _call(
                context,
                "RetryJob",
                lambda: self.handler.retry_job(caller_of(context), request.job_id),
            )
        )

    def FetchOutput(
        self, request: coordinator_pb2.FetchOutputRequest, context: grpc.ServicerContext
    ) -> Iterator[coordinator_pb2.BytesChunk]:
        try:
            chunks = self.handler.fetch_output(caller_of(context), request.job_id, request.name)
            for data in chunks:
                for i in range(0, len(data), CHUNK_SIZE):
                    yield coordinator_pb2.BytesChunk(data=data[i : i + CHUNK_SIZE])
        except Exception as exc:
            _abort(context, "FetchOutput", exc)

    def GetModel(
        self, request: coordinator_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.Model:
        return _model_pb(
            _call(
                context,
                "GetModel",
                lambda: self.handler.get_model(caller_of(context), request.model_id),
            )
        )

    def ListAuditEntries(
        self, request: coordinator_pb2.ListAuditEntriesRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.ListAuditEntriesResponse:
        entries = _call(
            context,
            "ListAuditEntries",
            lambda: self.handler.audit_entries(request.first, request.last),
        )
        return coordinator_pb2.ListAuditEntriesResponse(
            entries=[
                coordinator_pb2.AuditEntry(
                    seq=e.seq,
                    at=e.at,
                    event=e.event,
                    subject=e.subject,
                    detail=canonical.dumps(e.detail).decode(),
                    prev_hash=e.prev_hash,
                    hash=e.hash,
                )
                for e in entries
            ]
        )

    def ListModels(
        self, request: coordinator_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.ListModelsResponse:
        models = _call(context, "ListModels", lambda: self.handler.list_models(caller_of(context)))
        return coordinator_pb2.ListModelsResponse(models=[_model_pb(m) for m in models])

    def Predict(
        self,
        request_iterator: Iterator[enclave_pb2.PredictRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[enclave_pb2.PredictResponse]:
        try:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("part") != "query":
                raise FormatError("a prediction request must start with the signed query")
            answer = self.handler.predict(
                caller_of(context),
                bytes(first.query),
                _query_rows(request_iterator),
                on_start=_cancel_with(context),
                timeout=context.time_remaining(),
            )
            for message in answer:
                if isinstance(message, AnswerPiece):
                    yield enclave_pb2.PredictResponse(chunk=message.data)
                else:
                    yield enclave_pb2.PredictResponse(answer=message.data)
        except Exception as exc:
            _abort(context, "Predict", exc)

    def RetireModel(
        self,
        request: coordinator_pb2.CoordinatorRetireModelRequest,
        context: grpc.ServicerContext,
    ) -> coordinator_pb2.Model:
        return _model_pb(
            _call(
                context,
                "RetireModel",
                lambda: self.handler.retire_model(
                    caller_of(context), request.model_id, request.retirement
                ),
            )
        )


# --------------------------------------------------------------------------- authentication

SERVICE = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name
REGISTER_PARTY = f"/{SERVICE}/RegisterParty"


def _registration_key(request: coordinator_pb2.RegisterPartyRequest) -> str | None:
    """The key a RegisterParty request registers: its envelope's key id.

    None if the envelope does not even parse; the handler then refuses the
    body (INVALID_ARGUMENT), and its signature check ensures a stored
    registration is signed by exactly this key.
    """
    try:
        return Envelope.from_bytes(request.registration, "party registration").signer.hex
    except DetenteError:
        return None


def request_authenticator(store: CoordinatorStore) -> RequestAuthInterceptor:
    """Every method needs a registered party's signature; RegisterParty, the registering key's."""
    return RequestAuthInterceptor(
        is_registered=lambda key: store.get_party_by_key(key) is not None,
        self_registering={REGISTER_PARTY: _registration_key},
        # In the database: a request captured before a restart stays refused after it.
        nonces=DatabaseNonces(store),
        reply_trailer=lambda: audit_head_trailer(store),
    )


def audit_head_trailer(store: CoordinatorStore) -> list[tuple[str, str]]:
    """The signed audit head as trailing metadata (none while the log is empty)."""
    head = store.audit_head()
    return [] if head is None or not head.signature else [(AUDIT_HEAD_TRAILER, head.to_trailer())]
