"""Querying a sealed model: rows sealed to the attested enclave, predictions sealed to this party.

A sealed model never leaves the enclave (docs/protocol.md §7); a querier the
terms name sends it rows and gets predictions back. :func:`predict` reads a
CSV or Parquet file by the rules of an upload (:mod:`party_client.tables`:
numeric columns as numbers, text columns as categories), keeps the ``--id``
column on this machine, writes the rows as one Arrow IPC stream sealed under
a fresh key that is wrapped to the attested enclave, signs a prediction query
(protocols/SPEC.md §3.8) and streams both through the coordinator. The answer
(§3.9) is verified under the attested enclave key — its model, query, query
digest, rows and ciphertext digest — before it is opened, and the predictions
are written next to the ids, atomically and readable by this party alone.
:func:`predict_table` is the same path for a table in memory.

A refused query charges no budget; its message says what to do next.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from party_client import tables
from party_client.home import PartyHome
from party_client.remote import Coordinator, CoordinatorError, RemoteAnswer
from protocols import hpke, predictions, stream
from protocols.documents import (
    MAX_QUERY_ROWS,
    Budget,
    PredictionAnswer,
    PredictionQuery,
    check_id,
)
from protocols.durable import write_atomic
from protocols.errors import (
    BudgetExhausted,
    DatasetError,
    DetenteError,
    IntegrityError,
    NotAllowed,
    SetupError,
)
from protocols.keys import HpkePrivateKey, HpkePublicKey, SigningKey, VerifyKey
from protocols.statements import Envelope

if TYPE_CHECKING:
    from protocols.attestation import VerifiedEnclave
    from protocols.policy import AttestationPolicy

SEALING = "sealing"  # rows read, checked and sealed
SENDING = "sending"  # ciphertext sent to the coordinator
ANSWERED = "answered"  # the answer verified and opened
# The slowest rate tolerated for a query's rows and answer before the call times out.
MIN_QUERY_RATE = 1 << 20
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)
# The columns an answer may hold (protocols.predictions.answer_columns): an id column of
# one of these names would be ambiguous in the file written.
_ANSWER_COLUMN = re.compile(r"^(prediction(_\d+)?|class)$")


@dataclass(frozen=True)
class QueryProgress:
    """How far a query is: ``phase`` is ``"sealing"`` (``rows`` read and sealed, ``bytes`` of
    ciphertext so far), ``"sending"`` (``bytes`` of ``total_bytes`` sent) or ``"answered"``
    (the answer verified; ``rows`` answered)."""

    phase: str
    rows: int
    bytes: int
    total_bytes: int | None = None


ProgressCallback = Callable[[QueryProgress], None]


@dataclass(frozen=True)
class Predicted:
    """A query answered: what was scored, what came back and the budget left."""

    model_id: str
    query_id: str
    rows: int
    columns: list[str]  # the answer's columns (prediction, prediction_0 …, or class)
    remaining: Budget
    out: Path | None  # the file written (None for predict_table)
    id_column: str | None
    simulation: bool  # the enclave is a SIMULATION (no hardware protection)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "query_id": self.query_id,
            "rows": self.rows,
            "columns": self.columns,
            "remaining": self.remaining.to_dict(),
            "out": None if self.out is None else str(self.out),
            "id_column": self.id_column,
            "simulation": self.simulation,
        }


@dataclass(frozen=True)
class SealedRows:
    """A query table sealed in memory: its ciphertext, the key and how many rows."""

    ciphertext: bytes = field(repr=False)
    key: bytes = field(repr=False)  # a secret: never printed
    rows: int = 0


class _SealingSink:
    """A file-like sink (for :class:`pyarrow.PythonFile`) sealing what is written to it."""

    closed = False

    def __init__(self, key: bytes, associated_data: bytes) -> None:
        self._sealer = stream.StreamSealer(key, associated_data)
        self._parts = [self._sealer.header]
        self.size = len(self._sealer.header)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), stream.CHUNK_SIZE):
            for chunk in self._sealer.update(bytes(view[start : start + stream.CHUNK_SIZE])):
                self._parts.append(chunk)
                self.size += len(chunk)
        return len(view)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """pyarrow may close the file; the parts stay until :meth:`finish`."""

    def finish(self) -> bytes:
        self._parts.append(self._sealer.finish())
        blob = b"".join(self._parts)
        self._parts = []
        return blob


def seal_rows(
    scan: tables.TableScan,
    model_id: str,
    query_id: str,
    progress: ProgressCallback | None,
) -> tuple[SealedRows, Any]:
    """The scan's feature columns as one sealed Arrow IPC stream; the id column (or None)
    stays here. Refuses more rows than one query carries before sealing them."""
    import pyarrow as pa

    key = secrets.token_bytes(stream.KEY_SIZE)
    sink = _SealingSink(key, predictions.query_associated_data(model_id, query_id))
    id_column = scan.id_column
    features = pa.schema([f for f in scan.schema if f.name != id_column])
    ids: list[Any] = []
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), features) as writer:
        for batch in scan.batches():
            if scan.rows > MAX_QUERY_ROWS:
                raise DatasetError(
                    f"{scan.path} has more than {MAX_QUERY_ROWS:,} rows, more than one query "
                    "carries: split it into files of at most that many rows; nothing was sent"
                )
            if id_column is not None:
                ids.append(batch.column(id_column))
                batch = batch.drop_columns([id_column])
            writer.write_batch(batch)
            if progress is not None:
                progress(QueryProgress(SEALING, scan.rows, sink.size))
    ciphertext = sink.finish()
    id_values = pa.chunked_array(ids, scan.schema.field(id_column).type) if id_column else None
    return SealedRows(ciphertext, key, scan.rows), id_values


def _next_step(exc: CoordinatorError) -> DetenteError:
    """The coordinator's (or the enclave's) refusal, with what to do next by its kind (a
    retired or unknown model needs no more than the refusal says)."""
    if issubclass(exc.kind, BudgetExhausted):
        hint = (
            "nothing was charged; for more rows than the terms grant, the model's owners "
            "propose a new job with a larger --query budget"
        )
    elif issubclass(exc.kind, NotAllowed):
        hint = (
            "a model answers only the queriers its terms name: ask its owners for a job that "
            "names you with `detente party propose --sealed --query NAME=ROWS`"
        )
    else:
        return exc
    return CoordinatorError(f"{exc}; {hint}", exc.code, exc.kind)


def sign_query(
    signing: SigningKey,
    enclave_key: HpkePublicKey,
    mrenclave: str,
    model_id: str,
    query_id: str,
    sealed: SealedRows,
) -> Envelope:
    """The signed prediction query for ``sealed`` rows, their key wrapped to ``enclave_key``
    (protocols/SPEC.md §3.8)."""
    return PredictionQuery(
        model_id=model_id,
        query_id=query_id,
        issued_at=int(time.time()),
        rows=sealed.rows,
        ciphertext_sha256=hashlib.sha256(sealed.ciphertext).hexdigest(),
        wrapped_key=hpke.wrap_key(
            sealed.key, enclave_key, hpke.query_key_info(model_id, query_id, enclave_key)
        ),
        sealed_to_mrenclave=mrenclave,
        sealed_to_hpke_key=enclave_key,
    ).sign(signing)


def open_answer(
    relayed: RemoteAnswer,
    query: Envelope,
    enclave_key: VerifyKey,
    hpke_key: HpkePrivateKey,
) -> tuple[PredictionAnswer, Any]:
    """Verify what the coordinator relayed back for ``query`` and open it: the answer signed by
    the attested enclave key, for this very query (model, id, payload digest, rows), over
    exactly the ciphertext received; then the table it holds, with the columns it names.
    Raises IntegrityError (or SignatureError) on any difference: nothing is written then."""
    asked = PredictionQuery.verify(query)
    model_id, query_id = asked.model_id, asked.query_id
    answer = PredictionAnswer.verify(
        Envelope.from_bytes(relayed.answer, "prediction answer"), enclave_key
    )
    if (answer.model_id, answer.query_id) != (model_id, query_id):
        raise IntegrityError(
            f"the answer is about query {answer.query_id!r} of model {answer.model_id!r}, not "
            f"{query_id!r} of {model_id!r}: refused, nothing was written"
        )
    if answer.query_digest != query.digest:
        raise IntegrityError(
            "the answer is to another query than the one signed: refused, nothing was written"
        )
    if answer.rows != asked.rows:
        raise IntegrityError(
            f"the answer covers {answer.rows} rows, the query {asked.rows}: refused, nothing "
            "was written"
        )
    if hashlib.sha256(relayed.ciphertext).hexdigest() != answer.ciphertext_sha256:
        raise IntegrityError(
            "the predictions received do not match the enclave's signed answer (the "
            "coordinator altered or truncated them): refused, nothing was written"
        )
    key = hpke.unwrap_key(
        answer.wrapped_key,
        hpke_key,
        hpke.answer_key_info(model_id, query_id, hpke_key.public_key),
    )
    plaintext = stream.open_stream(
        key, relayed.ciphertext, predictions.answer_associated_data(model_id, query_id)
    )
    table = predictions.from_ipc(plaintext, "the answer")
    if table.num_rows != asked.rows or table.column_names != answer.columns:
        raise IntegrityError(
            "the answer table is not the one the enclave's signed answer describes: refused"
        )
    return answer, table


def _out_format(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise SetupError(
        f"--out {out} must end in .csv or .parquet (the format written); nothing was sent"
    )


def _write(out: Path, table: Any, form: str) -> None:
    """Write ``table`` to ``out`` atomically, readable by this party alone (mode 0600)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    if form == "csv":
        pacsv.write_csv(table, sink)
    else:
        pq.write_table(table, sink)
    write_atomic(out, sink.getvalue().to_pybytes(), mode=0o600)


def _query_id() -> str:
    return f"q-{secrets.token_hex(12)}"


class QuerySession:
    """Queries of one sealed model over one connection to the coordinator.

    The enclave's stored evidence is verified once under ``policy`` (the
    home's by default) and again once it is older than the policy's
    ``max_evidence_age_seconds``; the party's keys are read once. For many
    batches (a benchmark, a scoring service) this saves a verification, two
    key reads and a TLS handshake per query. Use it as a context manager, or
    :meth:`close` it.
    """

    def __init__(
        self,
        home: PartyHome,
        model_id: str,
        policy: AttestationPolicy | None = None,
        *,
        remote: Coordinator | None = None,
    ) -> None:
        self.model_id = check_id(model_id, "model id")
        self._home = home
        self._policy = policy or home.policy()
        self._enclave = self._verify()
        self._signing = home.signing_key()
        self._hpke = home.hpke_key()
        # A connection given is its owner's to close (a Party's); one opened here is ours.
        self._owned = remote is None
        self._remote = remote if remote is not None else Coordinator.for_home(home)
        self.last: Predicted | None = None  # the latest answer: rows, columns, budget left

    def _verify(self) -> VerifiedEnclave:
        enclave, age = self._home.attested_enclave(self._policy)
        self._verified_until = time.monotonic() + self._policy.max_evidence_age_seconds - age
        return enclave

    @property
    def simulation(self) -> bool:
        return bool(self._enclave.simulation)

    def close(self) -> None:
        if self._owned:
            self._remote.close()

    def __enter__(self) -> QuerySession:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def ask(
        self, sealed: SealedRows, query_id: str, progress: ProgressCallback | None = None
    ) -> tuple[PredictionAnswer, Any]:
        """Sign the query of ``sealed`` rows, relay it and them, verify and open the answer."""
        if time.monotonic() > self._verified_until:
            self._enclave = self._verify()  # refuses evidence older than the policy allows
        enclave = self._enclave
        # A post-quantum party wraps to the enclave's post-quantum key (protocols/SPEC.md §4.3).
        enclave_key = enclave.identity.data_key_recipient(self._hpke.kem)
        query = sign_query(
            self._signing, enclave_key, enclave.mrenclave, self.model_id, query_id, sealed
        )
        total = len(sealed.ciphertext)

        def sent(done: int) -> None:
            if progress is not None:
                progress(QueryProgress(SENDING, sealed.rows, done, total))

        try:
            relayed = self._remote.predict(
                query.to_bytes(),
                sealed.ciphertext,
                timeout=self._remote.timeout + 2 * total / MIN_QUERY_RATE,
                sent=sent,
            )
        except CoordinatorError as exc:
            raise _next_step(exc) from None
        answer, table = open_answer(relayed, query, enclave.identity.signing_key, self._hpke)
        if progress is not None:
            progress(QueryProgress(ANSWERED, sealed.rows, total, total))
        self.last = Predicted(
            self.model_id,
            query_id,
            answer.rows,
            answer.columns,
            answer.remaining,
            None,
            None,
            self.simulation,
        )
        return answer, table

    def predict_table(self, table: Any, column_kinds: dict[str, str] | None = None) -> Any:
        """Score a table in memory (a :class:`pyarrow.Table`, or what :func:`pyarrow.table`
        reads: a dict of columns, a pandas DataFrame) of the model's feature columns; the
        answer table, in row order (:attr:`last` holds the budget left).

        Columns are read by the rules of a Parquet upload: integers, floats and
        booleans as numbers, strings and dictionaries as categories.
        """
        import pyarrow as pa

        if not isinstance(table, pa.Table):
            try:
                table = pa.table(table)  # a dict of columns, a pandas DataFrame, …
            except (TypeError, ValueError, pa.ArrowException) as exc:
                raise DatasetError(
                    f"predict_table takes a pyarrow.Table (or what pyarrow.table() reads), not "
                    f"{type(table).__name__}: {exc}"
                ) from None
        scan = tables.TableScan(Path("the query table"), None, None, column_kinds, table=table)
        query_id = _query_id()
        sealed, _ = seal_rows(scan, self.model_id, query_id, None)
        return self.ask(sealed, query_id)[1]


def predict(
    home: PartyHome,
    model_id: str,
    path: Path,
    out: Path,
    id_column: str | None = None,
    progress: ProgressCallback | None = None,
    *,
    policy: AttestationPolicy | None = None,
    column_kinds: dict[str, str] | None = None,
    remote: Coordinator | None = None,
) -> Predicted:
    """Score the rows of a CSV or Parquet file with the sealed model ``model_id``.

    The file's columns must be the model's features (any order; no label);
    ``id_column`` names a column that stays here and is written back next to
    the predictions. ``out`` is written as CSV or Parquet by its suffix
    (mode 0600). ``column_kinds`` overrides a column's kind as ``--schema``
    does for an upload. ``policy`` is the attestation policy (default: the
    home's). The enclave checks the columns and charges the budget; the
    answer states what is left (:attr:`Predicted.remaining`).
    """
    model_id = check_id(model_id, "model id")
    out = Path(out)
    form = _out_format(out)
    if id_column is not None and _ANSWER_COLUMN.match(id_column):
        raise SetupError(
            f"the id column {id_column!r} has the name of an answer column: rename it in "
            "the file; nothing was sent"
        )
    with QuerySession(home, model_id, policy, remote=remote) as session:
        scan = tables.TableScan(Path(path), None, id_column, column_kinds)
        query_id = _query_id()
        sealed, ids = seal_rows(scan, model_id, query_id, progress)
        answer, table = session.ask(sealed, query_id, progress)
    if ids is not None:
        table = table.add_column(0, id_column, ids)
    _write(out, table, form)
    return Predicted(
        model_id,
        query_id,
        answer.rows,
        answer.columns,
        answer.remaining,
        out,
        id_column,
        session.simulation,
    )


def predict_table(
    home: PartyHome,
    model_id: str,
    table: Any,
    *,
    policy: AttestationPolicy | None = None,
    column_kinds: dict[str, str] | None = None,
    remote: Coordinator | None = None,
) -> Any:
    """Score a table in memory with the sealed model ``model_id``: one query of a
    :class:`QuerySession` (use one for many batches, and for the budget left)."""
    with QuerySession(home, model_id, policy, remote=remote) as session:
        return session.predict_table(table, column_kinds)
