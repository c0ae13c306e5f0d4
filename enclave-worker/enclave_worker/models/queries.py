"""A query of a sealed model, checked and answered (docs/protocol.md §7, protocols/SPEC.md §3.8).

:meth:`QueryHandler.check` runs every check that needs no row, in the order
of docs/protocol.md §7, before the service accepts a byte of the sealed rows:

1. the query's signature (by the key it names) and format;
2. the model exists here, and the signer is one of its terms' queriers;
3. the rows are sealed to this enclave (its MRENCLAVE and one of its HPKE keys);
4. the query is fresh — issued within ``QUERY_WINDOW_SECONDS`` of the
   enclave's clock — and its id was not answered in that window (replay);
5. the model is not retired (ModelRetired) and its statement was signed;
6. the querier's budget covers the rows (BudgetExhausted, naming what is left).

:meth:`QueryHandler.answer` then checks the ciphertext's size and digest,
unwraps its key, opens it, reads the Arrow table (as many rows as the query
says), checks its columns against the model's (models.schema), predicts with
the model from the cache, charges the budget — committed to the encrypted
mount, with the budget and replay checks run again under the model's lock —
and only then seals the answer to the querier's key from the terms and signs
it. A query refused at any step charges nothing; so does one whose
prediction fails (it predicts before it charges: the answer never leaves
before the charge is committed).

Every error names the model, the query, the columns and the kind of problem,
never a value; library exceptions are replaced (jobs.tables.value_free_errors).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from enclave_worker.identity import EnclaveIdentity
from enclave_worker.jobs.tables import value_free_errors
from enclave_worker.models.cache import ModelCache
from enclave_worker.models.store import ModelRecord, ModelStore, Tombstone
from libos import limits
from protocols import canonical, hpke, predictions, stream
from protocols.documents import (
    QUERY_WINDOW_SECONDS,
    Budget,
    PredictionAnswer,
    PredictionQuery,
    Querier,
)
from protocols.errors import ConsentError, FormatError, IntegrityError, NotAllowed
from protocols.statements import Envelope

log = logging.getLogger(__name__)

# Bytes a query's sealed rows may take per value (an Arrow IPC stream of float64
# or text columns: 8 bytes a number, a 4-byte offset plus the text), and in all
# beyond that: the stream's header, the IPC schema and batch metadata.
MAX_BYTES_PER_VALUE = 32
BASE_QUERY_BYTES = 1 << 20


@dataclass(frozen=True)
class CheckedQuery:
    """A query that passed every check that needs no row: its rows may now be received."""

    envelope: Envelope
    query: PredictionQuery
    querier: Querier
    record: ModelRecord
    max_bytes: int  # the sealed rows may not be longer

    @property
    def model_id(self) -> str:
        return self.query.model_id


@dataclass(frozen=True)
class Answer:
    """The sealed answer and its signed statement (a prediction-answer envelope)."""

    ciphertext: bytes
    envelope: bytes
    remaining: Budget


class QueryHandler:
    """Checks and answers queries of the models of one store. Thread-safe."""

    def __init__(
        self,
        store: ModelStore,
        cache: ModelCache,
        identity: EnclaveIdentity,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._cache = cache
        self._identity = identity
        self._clock = clock

    def check(self, envelope_bytes: bytes) -> CheckedQuery:
        """Steps 1–6 of the module docstring; raise the refusal of the first that fails."""
        now = self._clock()
        envelope = Envelope.from_bytes(envelope_bytes, "prediction query")
        query = PredictionQuery.verify(envelope)
        model_id = query.model_id
        found = self._store.record(model_id)
        queriers = (
            found.queriers
            if isinstance(found, Tombstone)
            else tuple(q.signing_key for q in found.terms.queriers)
        )
        if envelope.signer not in queriers:
            raise NotAllowed(
                f"key {envelope.signer.hex[:16]}… is not a querier of model {model_id!r}: only "
                "the parties its job terms name may query it"
            )
        if query.sealed_to_mrenclave != self._identity.mrenclave:
            raise ConsentError(
                f"query {query.query_id!r} was sealed to another enclave measurement "
                f"({query.sealed_to_mrenclave[:16]}…): attest this enclave and seal it again"
            )
        if self._identity.hpke_private_key_for(query.sealed_to_hpke_key) is None:
            raise ConsentError(
                f"query {query.query_id!r} was sealed to another enclave key: attest this "
                "enclave and seal it again"
            )
        _check_fresh(query, now)
        if isinstance(found, Tombstone):
            raise found.refusal()  # its usage, replayed ids included, is destroyed with it
        usage = self._store.usage(model_id, envelope.signer)
        usage.check_replay(query, now)
        record = self._store.active(model_id)
        querier = record.terms.querier(envelope.signer)
        assert querier is not None  # it is one of the queriers' keys
        usage.check_budget(querier, query, now)
        features = max(len(record.schema.features), 1)
        max_bytes = BASE_QUERY_BYTES + query.rows * features * MAX_BYTES_PER_VALUE
        return CheckedQuery(envelope, query, querier, record, max_bytes)

    def answer(self, checked: CheckedQuery, ciphertext: bytes) -> Answer:
        """Open the rows, check them, predict, charge, seal and sign the answer."""
        query, record = checked.query, checked.record
        model_id = query.model_id
        where = f"query {query.query_id!r} of model {model_id!r}"
        if len(ciphertext) > checked.max_bytes:
            raise FormatError(f"the sealed rows of {where} exceed {checked.max_bytes:,} bytes")
        if hashlib.sha256(ciphertext).hexdigest() != query.ciphertext_sha256:
            raise IntegrityError(
                f"the sealed rows of {where} do not match the digest the query signs: they were "
                "altered or swapped on the way"
            )
        outputs = max(record.schema.num_class or 1, 1)
        limits.check_allocation(
            3 * len(ciphertext) + query.rows * (4 * len(record.schema.features) + 8 * outputs),
            f"the rows of {where} ({query.rows:,} rows × {len(record.schema.features)} features)",
        )
        private = self._identity.hpke_private_key_for(query.sealed_to_hpke_key)
        assert private is not None  # checked by check()
        try:
            key = hpke.unwrap_key(
                query.wrapped_key,
                private,
                hpke.query_key_info(model_id, query.query_id, query.sealed_to_hpke_key),
            )
            plaintext = stream.open_stream(
                key, ciphertext, predictions.query_associated_data(model_id, query.query_id)
            )
        except (IntegrityError, FormatError) as exc:
            raise IntegrityError(
                f"the sealed rows of {where}: {exc}; seal them to this enclave again"
            ) from None
        del ciphertext
        with value_free_errors(f"reading the rows of {where}"):
            table = predictions.from_ipc(plaintext, f"the rows of {where}")
        del plaintext
        if table.num_rows != query.rows:
            raise IntegrityError(
                f"the rows of {where} hold {table.num_rows:,} rows, the query signs {query.rows:,}"
            )
        with value_free_errors(f"checking the columns of {where}"):
            inputs = record.schema.query_table(table, model_id)
        del table
        raw = self._predict(model_id, inputs, where)
        terms = record.terms
        with value_free_errors(f"shaping the answer of {where}"):
            shaped = predictions.shape_answer(
                raw,
                record.schema.objective,
                record.schema.num_class,
                terms.answer,
                terms.answer_digits,
            )
            body = predictions.to_ipc(shaped)
        remaining = self._charge(checked)
        answer_key = os.urandom(stream.KEY_SIZE)
        sealed = stream.seal_stream(
            answer_key, body, predictions.answer_associated_data(model_id, query.query_id)
        )
        querier_key = checked.querier.hpke_key
        statement = PredictionAnswer(
            model_id=model_id,
            query_id=query.query_id,
            query_digest=checked.envelope.digest,
            rows=query.rows,
            columns=list(shaped.column_names),
            ciphertext_sha256=canonical.sha256_hex(sealed),
            wrapped_key=hpke.wrap_key(
                answer_key, querier_key, hpke.answer_key_info(model_id, query.query_id, querier_key)
            ),
            remaining=remaining,
        )
        log.info(
            "model %s answered query %s of %s: %d rows, %s left",
            model_id,
            query.query_id,
            checked.querier.name,
            query.rows,
            remaining.describe(),
        )
        return Answer(sealed, statement.sign(self._identity.signing_key).to_bytes(), remaining)

    def _predict(self, model_id: str, inputs: Any, where: str) -> Any:
        import xgboost as xgb

        loaded = self._cache.get(model_id, lambda: self._store.load(model_id))
        with value_free_errors(f"predicting {where}"), loaded.lock:
            matrix = xgb.DMatrix(inputs, enable_categorical=True)
            return loaded.booster.predict(matrix)

    def _charge(self, checked: CheckedQuery) -> Budget:
        """Charge the rows and remember the query id, committed; the checks again first."""
        query, querier = checked.query, checked.querier
        model_id = query.model_id
        with self._store.lock(model_id):
            now = self._clock()
            self._store.active(model_id)  # retired meanwhile: refused, nothing charged
            usage = self._store.usage(model_id, querier.signing_key)
            usage.check(querier, query, now)
            charged = usage.charged(query, now)
            self._store.write_usage(model_id, querier.signing_key, charged)
        return charged.remaining(querier, now)


def _check_fresh(query: PredictionQuery, now: float) -> None:
    skew = query.issued_at - now
    if abs(skew) > QUERY_WINDOW_SECONDS:
        direction = "after" if skew > 0 else "before"
        raise IntegrityError(
            f"query {query.query_id!r} was issued {abs(skew):,.0f} s {direction} the enclave's "
            f"clock; queries are answered within {QUERY_WINDOW_SECONDS} s of their time: check "
            "the clock and send a new query"
        )
