"""A querier of sealed models for worker tests: queries sealed exactly as protocols/SPEC.md §3.8
says, sent over the worker's real Predict stream, answers verified and opened as §3.9 says."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any

import grpc
import pyarrow as pa
from worker_testkit import Owner, Worker

from protocols import hpke, predictions, stream
from protocols.documents import ModelRetirement, PredictionAnswer, PredictionQuery, Querier
from protocols.keys import HpkePublicKey, VerifyKey
from protocols.statements import Envelope
from protocols.wire.v1 import enclave_pb2, enclave_pb2_grpc

CHUNK = stream.CHUNK_SIZE


class QueryRefused(Exception):
    """The worker refused a call: its status code name and details."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


def querier(party: Owner, total: int, per_day: int | None = None) -> Querier:
    return Querier(party.name, party.signing.verify_key, party.hpke.public_key, total, per_day)


@dataclass(frozen=True)
class Enclave:
    hpke_key: HpkePublicKey
    mrenclave: str
    signing_key: VerifyKey


def enclave_of(worker: Worker) -> Enclave:
    _der, verified = worker.client().verify()
    return Enclave(verified.identity.hpke_key, verified.mrenclave, verified.identity.signing_key)


@dataclass(frozen=True)
class SealedQuery:
    query: PredictionQuery
    envelope: bytes
    rows: bytes  # the sealed Arrow IPC stream


def seal_query(
    enclave: Enclave,
    me: Owner,
    model_id: str,
    table: pa.Table,
    *,
    query_id: str | None = None,
    issued_at: int | None = None,
) -> SealedQuery:
    """``table`` sealed to ``enclave`` and a query signed by ``me`` (protocols/SPEC.md §3.8)."""
    query_id = query_id or f"q-{secrets.token_hex(8)}"
    key = secrets.token_bytes(32)
    blob = stream.seal_stream(
        key, predictions.to_ipc(table), predictions.query_associated_data(model_id, query_id)
    )
    query = PredictionQuery(
        model_id=model_id,
        query_id=query_id,
        issued_at=int(time.time()) if issued_at is None else issued_at,
        rows=table.num_rows,
        ciphertext_sha256=hashlib.sha256(blob).hexdigest(),
        wrapped_key=hpke.wrap_key(
            key, enclave.hpke_key, hpke.query_key_info(model_id, query_id, enclave.hpke_key)
        ),
        sealed_to_mrenclave=enclave.mrenclave,
        sealed_to_hpke_key=enclave.hpke_key,
    )
    return SealedQuery(query, query.sign(me.signing).to_bytes(), blob)


def resigned(sealed: SealedQuery, me: Owner, **changes: Any) -> SealedQuery:
    """The same rows under a query with ``changes``, signed by ``me``."""
    query = replace(sealed.query, **changes)
    return SealedQuery(query, query.sign(me.signing).to_bytes(), sealed.rows)


def send(worker: Worker, envelope: bytes, rows: bytes) -> tuple[bytes, bytes]:
    """One Predict call: (the sealed answer, the answer envelope); QueryRefused if refused."""

    def requests() -> Any:
        yield enclave_pb2.PredictRequest(query=envelope)
        for start in range(0, len(rows), CHUNK):
            yield enclave_pb2.PredictRequest(chunk=rows[start : start + CHUNK])

    answer, signed = bytearray(), b""
    with worker.client().channel() as channel:
        try:
            for reply in enclave_pb2_grpc.EnclaveStub(channel).Predict(requests(), timeout=120):
                if reply.WhichOneof("part") == "chunk":
                    answer += reply.chunk
                else:
                    signed = bytes(reply.answer)
        except grpc.RpcError as exc:
            raise QueryRefused(exc.code().name, str(exc.details())) from None
    return bytes(answer), signed


def predict(
    worker: Worker, enclave: Enclave, me: Owner, sealed: SealedQuery
) -> tuple[PredictionAnswer, pa.Table]:
    """Send the query, verify the answer (enclave key, query, digest) and open it as ``me``."""
    blob, signed = send(worker, sealed.envelope, sealed.rows)
    answer = PredictionAnswer.verify(Envelope.from_bytes(signed), enclave.signing_key)
    query = sealed.query
    assert answer.model_id == query.model_id and answer.query_id == query.query_id
    assert answer.query_digest == Envelope.from_bytes(sealed.envelope).digest
    assert answer.rows == query.rows
    assert hashlib.sha256(blob).hexdigest() == answer.ciphertext_sha256
    key = hpke.unwrap_key(
        answer.wrapped_key,
        me.hpke,
        hpke.answer_key_info(query.model_id, query.query_id, me.hpke.public_key),
    )
    plain = stream.open_stream(
        key, blob, predictions.answer_associated_data(query.model_id, query.query_id)
    )
    table = predictions.from_ipc(plain, "answer")
    assert table.column_names == answer.columns
    return answer, table


def query(
    worker: Worker, enclave: Enclave, me: Owner, model_id: str, table: pa.Table, **fields: Any
) -> tuple[PredictionAnswer, pa.Table]:
    return predict(worker, enclave, me, seal_query(enclave, me, model_id, table, **fields))


def refused(worker: Worker, sealed: SealedQuery) -> QueryRefused:
    """The refusal of a query the worker must refuse."""
    try:
        send(worker, sealed.envelope, sealed.rows)
    except QueryRefused as exc:
        return exc
    raise AssertionError("the worker answered a query it must refuse")


def retirement(owner: Owner, model_id: str, terms_digest: str) -> bytes:
    return ModelRetirement(model_id, terms_digest).sign(owner.signing).to_bytes()


def retire(worker: Worker, model_id: str, retirements: list[bytes]) -> None:
    """One RetireModel call; QueryRefused if refused."""
    with worker.client().channel() as channel:
        try:
            enclave_pb2_grpc.EnclaveStub(channel).RetireModel(
                enclave_pb2.RetireModelRequest(model_id=model_id, retirements=retirements),
                timeout=60,
            )
        except grpc.RpcError as exc:
            raise QueryRefused(exc.code().name, str(exc.details())) from None
