"""Sealed models (docs/protocol.md §7): who sees them, the query relay, retirement.

The coordinator never holds a sealed model or its key. It keeps a record of
each (owners, queriers, retirements received, queries relayed) and relays
queries and answers unread. Its checks here give a party a clear error early
and keep a stranger's bytes from reaching the enclave; they decide nothing:
the enclave checks every query's signer, budget and freshness, and every
retirement signature, against its own record of the model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator

from coordinator.enclave_client import EnclaveClient, PredictMessage, SignedAnswer
from coordinator.pool import WorkerPool
from coordinator.store import (
    RETIRED,
    Audit,
    CoordinatorStore,
    ModelRecord,
    RetirementRecord,
    now_ms,
)
from coordinator.store.records import NOT_TRUSTED, SERVING
from protocols import grpc_status
from protocols.documents import ModelRetirement, PredictionQuery
from protocols.errors import (
    AttestationError,
    DetenteError,
    EnclaveUnavailable,
    InvalidRequest,
    ModelRetired,
    NotAllowed,
    NotFound,
)
from protocols.statements import Envelope

log = logging.getLogger(__name__)

# The sealed rows of one query the coordinator relays at most. A query carries at
# most MAX_QUERY_ROWS (1,000,000) rows; as Arrow IPC that is ~8 bytes per numeric
# feature per row, so 1 GiB leaves room for ~130 float64 features at the row limit.
# It bounds what one querier can make the coordinator (and the enclave) stream.
MAX_QUERY_BYTES = 1 << 30


def _short(keys: Iterable[str]) -> str:
    return ", ".join(k[:16] + "…" for k in keys)


class Models:
    """The sealed models a party owns or may query, their queries and their retirement."""

    def __init__(self, store: CoordinatorStore, pool: WorkerPool) -> None:
        self.store = store
        self.pool = pool
        # Retirements of one model must not race each other past the all-signed check.
        self._retire_lock = threading.Lock()

    # seeing -----------------------------------------------------------------

    def visible_model(self, caller: str, model_id: str) -> ModelRecord:
        """The model if ``caller`` owns or may query it; NotFound otherwise (as if it did
        not exist)."""
        try:
            model = self.store.get_model(model_id)
        except NotFound:
            model = None
        if model is None or not model.visible_to(caller):
            raise NotFound(
                f"no sealed model {model_id!r} that you own or may query: list yours with "
                "`detente party models`"
            )
        return model

    def list_models(self, caller: str) -> list[ModelRecord]:
        return [m for m in self.store.list_models() if m.visible_to(caller)]

    # querying ---------------------------------------------------------------

    def predict(
        self,
        caller: str,
        query: bytes,
        chunks: Iterable[bytes],
        on_start: Callable[[Callable[[], object]], object] | None = None,
        timeout: float | None = None,
    ) -> Iterator[PredictMessage]:
        """Check the query is the caller's and the caller may query the model, then
        return the relay: the enclave's answer pieces and signed answer, unchanged.

        Every refusal here is raised before anything is sent to the enclave.
        """
        envelope = Envelope.from_bytes(query, "prediction query")
        doc = PredictionQuery.verify(envelope)
        if envelope.signer.hex != caller:
            raise NotAllowed("a prediction query is sent by the querier that signed it")
        model = self.visible_model(caller, doc.model_id)
        if caller not in model.queriers:
            raise NotAllowed(
                f"you are not a querier of model {model.model_id!r}: the terms that sealed it "
                f"let only {_short(model.queriers)} query it"
            )
        if model.state == RETIRED:
            raise ModelRetired(
                f"the model {model.model_id!r} was retired by its owners: it answers no queries"
            )
        messages = self._keeper(model, "answers no query").predict(
            query, _bounded(chunks, doc.query_id), on_start=on_start, timeout=timeout
        )
        return self._relay(caller, model.model_id, doc, messages)

    def _keeper(self, model: ModelRecord, what: str) -> EnclaveClient:
        return _keeper_of(self.pool, model, what)

    def _relay(
        self,
        caller: str,
        model_id: str,
        doc: PredictionQuery,
        messages: Iterator[PredictMessage],
    ) -> Iterator[PredictMessage]:
        for message in messages:
            if isinstance(message, SignedAnswer):
                self._count(model_id, caller, doc.rows)
            yield message

    def _count(self, model_id: str, querier: str, rows: int) -> None:
        """Count an answered query; a failure to count never withholds the answer (the
        enclave has charged the budget by now)."""
        try:
            self.store.count_query(model_id, querier, rows)
        except Exception:
            log.exception("could not count a query of model %s", model_id)
        log.info("model %s answered %d rows for %s…", model_id, rows, querier[:16])

    # retiring ---------------------------------------------------------------

    def retire_model(self, caller: str, model_id: str, retirement: bytes) -> ModelRecord:
        """Keep one owner's signed retirement; once every owner's is here, have the
        enclave destroy the model, then record it retired.

        If the enclave call fails, the signatures stay and the model stays
        sealed: any owner sending its retirement again re-sends them all.
        """
        envelope = Envelope.from_bytes(retirement, "model retirement")
        doc = ModelRetirement.verify(envelope)
        signer = envelope.signer.hex
        if signer != caller:
            raise NotAllowed("a model retirement is sent by the owner that signed it")
        with self._retire_lock:
            model = self.visible_model(caller, model_id)
            if signer not in model.owners:
                raise NotAllowed(
                    f"{signer[:16]}… owns no data set of the job that sealed model "
                    f"{model_id!r}: only its owners ({_short(model.owners)}) retire it"
                )
            if doc.model_id != model_id:
                raise InvalidRequest(
                    f"the retirement is for model {doc.model_id!r}, not model {model_id!r}"
                )
            if doc.terms_digest != model.terms_digest:
                raise InvalidRequest(
                    f"the retirement names terms digest {doc.terms_digest[:16]}…, but model "
                    f"{model_id!r} was sealed by terms with digest {model.terms_digest[:16]}…: "
                    f"sign a retirement of this model with `detente party retire {model_id}`"
                )
            if model.state == RETIRED:
                return model
            model = self.store.add_retirement(
                model_id,
                RetirementRecord(signer, retirement, now_ms()),
                Audit(
                    "model.retirement_signed",
                    model_id,
                    {"owner": signer, "retirement_sha256": envelope.digest},
                ),
            )
            waiting = model.unsigned_owners()
            if waiting:
                log.info("model %s: retired by %s…, %d to go", model_id, signer[:16], len(waiting))
                return model
            return self._destroy(model)

    def _destroy(self, model: ModelRecord) -> ModelRecord:
        """Pass every owner's retirement to the enclave; record the model retired once it
        destroyed it (or says it already had)."""
        model_id = model.model_id
        retry = (
            f"every owner's retirement is kept and model {model_id!r} stays sealed: any owner "
            f"re-sends them with `detente party retire {model_id}`"
        )
        by_owner = {r.owner: r.envelope for r in model.retirements}
        try:
            keeper = self._keeper(model, "cannot destroy it now")
        except EnclaveUnavailable as exc:
            raise EnclaveUnavailable(f"{exc}; {retry}") from None
        try:
            keeper.retire_model(model_id, [by_owner[o] for o in model.owners])
        except ModelRetired:
            log.info("model %s: the enclave had already retired it", model_id)
        except DetenteError as exc:
            log.warning("model %s: the enclave did not retire it: %s", model_id, type(exc).__name__)
            raise grpc_status.catalogue_class(exc)(f"{exc}; {retry}") from None
        log.info("model %s retired: the enclave destroyed it", model_id)
        return self.store.retire_model(
            model_id, Audit("model.retired", model_id, {"owners": model.owners})
        )


def _keeper_of(pool: WorkerPool, model: ModelRecord, what: str) -> EnclaveClient:
    """The client of the worker whose encrypted mount keeps ``model``; EnclaveUnavailable
    naming it if it is not in the pool or not serving now. A model sealed before the
    coordinator recorded workers goes to any serving worker."""
    if not model.worker:
        return pool.any_client()
    record = pool.record_of(model.worker)
    client = pool.client_for(model.worker)
    if record is None or client is None:
        raise EnclaveUnavailable(
            f"model {model.model_id!r} is sealed in worker {model.worker}, which is no longer "
            f"in this coordinator's pool, so it {what}: its operator adds it back with "
            f"`detente coordinator workers add {model.worker}`"
        )
    if record.health == NOT_TRUSTED:
        raise AttestationError(
            f"model {model.model_id!r} is sealed in worker {model.worker}, which this "
            f"coordinator's enclave policy refuses now, so it {what}: {record.problem}"
        )
    if record.health != SERVING:
        raise EnclaveUnavailable(
            f"model {model.model_id!r} is sealed in worker {model.worker}, which is "
            f"{record.health} now ({record.problem or 'no detail'}), so it {what}: try again "
            "once that worker serves (its operator checks it with `detente coordinator workers`)"
        )
    return client


def _bounded(chunks: Iterable[bytes], query_id: str) -> Iterator[bytes]:
    """The sealed rows, relayed as they come, refused once they pass MAX_QUERY_BYTES."""
    size = 0
    for data in chunks:
        size += len(data)
        if size > MAX_QUERY_BYTES:
            raise InvalidRequest(
                f"the sealed rows of query {query_id!r} pass the coordinator's relay limit of "
                f"{MAX_QUERY_BYTES:,} bytes (MAX_QUERY_BYTES): split the file into smaller "
                "queries"
            )
        yield data
