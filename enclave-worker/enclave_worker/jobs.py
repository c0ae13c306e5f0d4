"""Run one job inside the enclave: consent, intake, join, train, release (DESIGN.md §3.5–3.6).

Consent is checked from the job spec alone, before a byte of data is read:
the terms must be signed by their proposer, allow this enclave's measurement
and not be expired; each data set's manifest must be the one the terms name,
signed by its owner and sealed to this enclave; and every owner must have
approved these exact terms. Only then are data keys unwrapped.

Errors leave the enclave (as the job's error, in events and in the host's
logs), so every error raised here names the data set, the column and the kind
of problem, never a value; exceptions of numpy, Arrow and XGBoost, whose
texts may quote values, are turned into such errors at each stage
(:func:`_stage`) and their text is dropped.

The worker runs :func:`run` in a child process per job (enclave_worker.job_process);
what the code needs from where it runs — the memory limit, peak memory, a way
to report rounds while XGBoost trains, checkpoint storage — comes in a
:class:`JobEnvironment`, so the same code runs in-process in tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from enclave_worker.identity import EnclaveIdentity
from libos import limits
from protocols import canonical, hpke, stream
from protocols.documents import (
    DatasetManifest,
    JobTerms,
    OutputRecord,
    ResultStatement,
    check_approvals,
    check_release,
    schema_columns,
    schema_sha256,
)
from protocols.errors import ConsentError, DatasetError, DetenteError, FormatError, IntegrityError
from protocols.objectives import check_labels, check_objective, summarize_labels
from protocols.statements import Envelope

log = logging.getLogger("enclave_worker.jobs")

# Parameters the terms may not set: the enclave decides where threads and files go.
_FORBIDDEN_PARAMS = {"device", "tree_method_gpu", "model_out", "model_in", "save_period"}

# Parameters that make XGBoost draw random numbers while it trains. With any of
# them below 1 (or gradient-based sampling, or the DART booster) a run resumed
# from a checkpoint does not continue the random stream of an uninterrupted run,
# so its model differs (checked with XGBoost 3.2: 10 + 10 rounds ≠ 20 rounds
# with subsample = 0.8).
_SAMPLING_PARAMS = ("subsample", "colsample_bytree", "colsample_bylevel", "colsample_bynode")
CHECKPOINT_VERSION = 1


@dataclass
class Progress:
    kind: str
    text: str


class CheckpointStore(Protocol):
    """Where training checkpoints live: the encrypted file system, never plain host files."""

    def read(self, name: str) -> bytes | None: ...
    def write(self, name: str, data: bytes) -> None: ...


@dataclass
class JobEnvironment:
    """What :func:`run` gets from the process it runs in.

    ``check_allocation(nbytes, what)`` raises before a large allocation that
    the enclave's memory limit cannot hold; ``peak_rss_bytes`` is the peak
    memory of the process (both libos.limits by default: outside an enclave
    the check allows all); ``emit`` receives progress while XGBoost trains (a
    generator cannot yield from inside it); ``checkpoints`` keeps boosters
    between rounds so a re-run resumes.
    """

    check_allocation: Callable[[int, str], None] = limits.check_allocation
    peak_rss_bytes: Callable[[], int] = limits.peak_rss_bytes
    emit: Callable[[Progress], None] | None = None
    checkpoints: CheckpointStore | None = None


@dataclass
class ReleasedOutput:
    name: str
    ciphertext: bytes


@dataclass
class AcceptedJob:
    """A job whose consent checks passed; data sets may now be received."""

    terms_envelope: Envelope
    terms: JobTerms
    manifests: dict[str, DatasetManifest]
    received: dict[str, bytearray] = field(default_factory=dict)

    counted: dict[str, int] = field(default_factory=dict)

    def check_chunk(self, dataset_id: str, size: int) -> None:
        """Count ``size`` bytes of ``dataset_id``; refuse a data set not in the job or too long.

        The worker's service counts here what it forwards to the job process,
        so intake errors surface before the data goes anywhere.
        """
        manifest = self.manifests.get(dataset_id)
        if manifest is None:
            raise ConsentError(f"data set {dataset_id!r} is not part of job {self.terms.job_id!r}")
        total = self.counted.get(dataset_id, 0) + size
        if total > manifest.ciphertext_size:
            raise IntegrityError(
                f"data set {dataset_id!r} is longer than its signed manifest says "
                f"({manifest.ciphertext_size} bytes)"
            )
        self.counted[dataset_id] = total

    def add_chunk(self, dataset_id: str, data: bytes) -> None:
        self.check_chunk(dataset_id, len(data))
        self.received.setdefault(dataset_id, bytearray()).extend(data)


def accept(
    identity: EnclaveIdentity,
    terms_bytes: bytes,
    approvals: list[bytes],
    manifests: list[bytes],
    now: float | None = None,
) -> AcceptedJob:
    """Check consent for a job, or raise ConsentError/SignatureError/FormatError."""
    terms_envelope = Envelope.from_bytes(terms_bytes, "job terms")
    terms = JobTerms.verify(terms_envelope)
    now = time.time() if now is None else now
    if terms.expires_at <= now:
        raise ConsentError(f"job {terms.job_id!r} expired at {terms.expires_at}: propose it again")
    if identity.mrenclave not in terms.allowed_mrenclaves:
        raise ConsentError(
            f"job {terms.job_id!r} does not allow this enclave's measurement {identity.mrenclave}"
        )
    bad = _FORBIDDEN_PARAMS & set(terms.params)
    if bad:
        raise ConsentError(f"job terms set parameters the enclave controls: {sorted(bad)}")
    by_id: dict[str, tuple[Envelope, DatasetManifest]] = {}
    for raw in manifests:
        envelope = Envelope.from_bytes(raw, "dataset manifest")
        manifest = DatasetManifest.verify(envelope)
        by_id[manifest.dataset_id] = (envelope, manifest)
    accepted: dict[str, DatasetManifest] = {}
    for dataset_id, digest in terms.datasets:
        if dataset_id not in by_id:
            raise ConsentError(f"no signed manifest was given for data set {dataset_id!r}")
        envelope, manifest = by_id[dataset_id]
        if envelope.digest != digest:
            raise ConsentError(
                f"the manifest of data set {dataset_id!r} is not the one the job terms name"
            )
        if manifest.sealed_to_mrenclave != identity.mrenclave:
            raise ConsentError(
                f"data set {dataset_id!r} was sealed to another enclave measurement "
                f"({manifest.sealed_to_mrenclave[:16]}…)"
            )
        if identity.hpke_private_key_for(manifest.sealed_to_hpke_key) is None:
            raise ConsentError(f"data set {dataset_id!r} was sealed to another enclave key")
        accepted[dataset_id] = manifest
    owners = {m.owner_key for m in accepted.values()}
    check_approvals(
        terms_envelope, owners, [Envelope.from_bytes(a, "job approval") for a in approvals]
    )
    check_release(terms, owners)
    try:
        check_objective(terms.objective)
    except DatasetError as exc:
        raise ConsentError(str(exc)) from None
    log.info("job %s accepted: %d data sets, all owners approved", terms.job_id, len(accepted))
    return AcceptedJob(terms_envelope, terms, accepted)


def _open_dataset(identity: EnclaveIdentity, manifest: DatasetManifest, blob: bytes) -> Any:
    import pyarrow as pa

    if len(blob) != manifest.ciphertext_size:
        raise IntegrityError(
            f"data set {manifest.dataset_id!r} is {len(blob)} bytes, its manifest says "
            f"{manifest.ciphertext_size}: it was truncated or extended"
        )
    if hashlib.sha256(blob).hexdigest() != manifest.ciphertext_sha256:
        raise IntegrityError(
            f"data set {manifest.dataset_id!r} does not match the digest in its signed manifest"
        )
    # The manifest names which of the enclave's keys (X25519 or post-quantum) it used.
    own = manifest.sealed_to_hpke_key
    private = identity.hpke_private_key_for(own)
    if private is None:
        raise ConsentError(f"data set {manifest.dataset_id!r} was sealed to another enclave key")
    key = hpke.unwrap_key(
        manifest.wrapped_key, private, hpke.data_key_info(manifest.dataset_id, own)
    )
    plaintext = stream.open_stream(key, blob, manifest.dataset_id.encode())
    try:
        table = pa.ipc.open_stream(io.BytesIO(plaintext)).read_all()
    except (pa.ArrowException, ValueError, OSError):
        # Arrow's text may quote bytes of the data: only the kind of problem leaves.
        raise FormatError(
            f"data set {manifest.dataset_id!r} is not a readable Arrow IPC stream"
        ) from None
    columns = schema_columns(table.schema)
    if schema_sha256(columns) != manifest.schema_sha256:
        raise IntegrityError(f"data set {manifest.dataset_id!r} schema differs from its manifest")
    if table.num_rows != manifest.row_count:
        raise IntegrityError(
            f"data set {manifest.dataset_id!r} row count differs from its manifest"
        )
    return table


@contextlib.contextmanager
def _stage(what: str) -> Iterator[None]:
    """Turn any non-Detente exception of ``what`` into a DatasetError without its text.

    Texts of numpy, Arrow and XGBoost errors may quote data values; our own
    errors never do. The exception type is kept: it says the kind of problem.
    """
    try:
        yield
    except DetenteError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise DatasetError(
            f"{what} failed ({type(exc).__name__}); the enclave withholds the library's "
            "message, which may quote data values"
        ) from None


def _is_numeric(kind: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
    )


def check_table(dataset_id: str, table: Any, terms: JobTerms) -> None:
    """Check one data set before any join: label present and fit for the objective,
    every feature numeric and finite. Errors name the data set and column."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    where = f"data set {dataset_id!r}"
    if terms.label not in table.column_names:
        raise DatasetError(f"{where} has no label column {terms.label!r}")
    for name in table.column_names:
        if name == terms.id_column:
            continue
        kind = table.schema.field(name).type
        if not _is_numeric(kind):
            hint = (
                "if it identifies rows, propose the job with --id naming it"
                if name != terms.label
                else "labels must be numbers"
            )
            raise DatasetError(f"{where} column {name!r} holds {kind} values, not numbers: {hint}")
        if name != terms.label and pa.types.is_floating(kind):
            with _stage(f"checking {where} column {name!r}"):
                infinite = int(pc.sum(pc.is_inf(table.column(name))).as_py() or 0)
            if infinite:
                raise DatasetError(
                    f"{where} column {name!r} has {infinite} infinite values; XGBoost needs "
                    "finite numbers or missing values"
                )
    column = table.column(terms.label)
    if column.null_count:
        raise DatasetError(
            f"{where} label column {terms.label!r} has {column.null_count} missing values"
        )
    with _stage(f"reading {where} label column {terms.label!r}"):
        labels = column.to_numpy(zero_copy_only=False).astype(np.float64)
    check_labels(terms.objective, summarize_labels(terms.label, labels, where), terms.params, where)


def feature_matrix(table: Any, label: str, id_column: str | None) -> tuple[Any, Any, list[str]]:
    """Arrow table → (float32 features, float32 labels, feature names).

    Every non-label, non-id column is a feature, in schema order; nulls are NaN
    (XGBoost's missing value). The same rule is documented for plaintext users
    so a model trained here equals one trained on the joined rows in the clear.
    """
    import numpy as np

    names = [n for n in table.column_names if n not in (label, id_column)]
    if label not in table.column_names:
        raise DatasetError(f"label column {label!r} is not in the data")
    x = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        with _stage(f"converting column {name!r} to numbers"):
            x[:, j] = table.column(name).to_numpy(zero_copy_only=False).astype(np.float32)
    with _stage(f"converting label column {label!r} to numbers"):
        y = table.column(label).to_numpy(zero_copy_only=False).astype(np.float32)
    return x, y, names


def _first_difference(schema: Any, other: Any) -> str:
    """Where ``other`` first differs from ``schema``: a column name and what differs."""
    for position in range(max(len(schema), len(other))):
        if position >= len(schema):
            return f"has an extra column {other.field(position).name!r}"
        if position >= len(other):
            return f"lacks the column {schema.field(position).name!r}"
        mine, theirs = schema.field(position), other.field(position)
        if mine.name != theirs.name:
            return (
                f"has column {theirs.name!r} where the first data set has {mine.name!r} "
                f"(column {position + 1})"
            )
        if not mine.type.equals(theirs.type):
            return (
                f"has column {theirs.name!r} of type {theirs.type}, the first data set {mine.type}"
            )
    return "differs in column metadata"


def _join(tables: list[Any], job: AcceptedJob) -> Any:
    """Horizontal join: the union of rows, in terms order, of tables with equal schemas.

    The id column identifies rows but is no feature, so its type may differ
    between parties; it is dropped before the schemas are compared.
    """
    import pyarrow as pa

    id_column = job.terms.id_column
    tables = [t.drop_columns([id_column]) if id_column in t.column_names else t for t in tables]
    first = tables[0].schema
    for (dataset_id, _), table in zip(job.terms.datasets, tables, strict=True):
        if not table.schema.equals(first):
            raise DatasetError(
                f"horizontal join needs equal schemas; data set {dataset_id!r} "
                f"{_first_difference(first, table.schema)} (first data set "
                f"{job.terms.datasets[0][0]!r})"
            )
    with _stage("joining the data sets"):
        return pa.concat_tables(tables)


def resumable(params: dict[str, Any]) -> bool:
    """Whether training with ``params`` can stop and resume from a checkpoint unchanged.

    Resuming (``xgb.train(..., xgb_model=booster)``) rebuilds the booster from
    its saved model; trees, base score and the evaluation history carry over,
    the random state does not. Without row or column sampling nothing random is
    drawn, and the resumed model equals an uninterrupted one bit for bit (the
    worker's tests check this). With sampling it would not, so such jobs keep
    only their finished model.
    """
    for name in _SAMPLING_PARAMS:
        value = params.get(name, 1)
        if not isinstance(value, int | float) or value < 1:
            return False
    # DART drops trees at random and gblinear may shuffle features: gbtree only.
    return (
        params.get("sampling_method", "uniform") == "uniform"
        and params.get("booster", "gbtree") == "gbtree"
    )


def checkpoint_name(job: AcceptedJob) -> str:
    """Checkpoints are keyed by job id and terms digest: other terms never resume from them."""
    return f"checkpoints/{job.terms.job_id}/{job.terms_envelope.digest}.xgb"


@dataclass
class Checkpoint:
    """A booster after ``rounds`` rounds, with the evaluation history so far."""

    rounds: int
    complete: bool
    history: dict[str, Any]
    model: bytes  # Booster.save_raw("ubj")

    def to_bytes(self, job: AcceptedJob) -> bytes:
        header = canonical.dumps(
            {
                "version": CHECKPOINT_VERSION,
                "job_id": job.terms.job_id,
                "terms_digest": job.terms_envelope.digest,
                "rounds": self.rounds,
                "complete": self.complete,
                "history": self.history,
            }
        )
        return len(header).to_bytes(4, "big") + header + self.model

    @classmethod
    def from_bytes(cls, data: bytes, job: AcceptedJob) -> Checkpoint:
        what = f"checkpoint of job {job.terms.job_id!r}"
        size = int.from_bytes(data[:4], "big")
        header = canonical.loads(data[4 : 4 + size], what)
        if (
            header.get("version") != CHECKPOINT_VERSION
            or header.get("job_id") != job.terms.job_id
            or header.get("terms_digest") != job.terms_envelope.digest
        ):
            raise IntegrityError(f"{what} belongs to other job terms")
        rounds = canonical.field(header, "rounds", int, what)
        if not 0 < rounds <= job.terms.num_rounds:
            raise FormatError(
                f"{what} has {rounds} rounds, the terms ask for {job.terms.num_rounds}"
            )
        return cls(
            rounds=rounds,
            complete=canonical.field(header, "complete", bool, what),
            history=canonical.field(header, "history", dict, what),
            model=data[4 + size :],
        )


def _merge_history(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for data_name in sorted(set(old) | set(new)):
        metrics: dict[str, list[float]] = {}
        for source in (old.get(data_name, {}), new.get(data_name, {})):
            for metric, values in source.items():
                metrics.setdefault(metric, []).extend(float(v) for v in values)
        merged[data_name] = metrics
    return merged


def _load_checkpoint(job: AcceptedJob, env: JobEnvironment) -> Checkpoint | None:
    """The job's checkpoint if one exists and may be used for these parameters."""
    if env.checkpoints is None:
        return None
    data = env.checkpoints.read(checkpoint_name(job))
    if data is None:
        return None
    checkpoint = Checkpoint.from_bytes(data, job)
    if not checkpoint.complete and not resumable(job.terms.train_params()):
        log.info("job %s: checkpoint ignored, sampling parameters cannot resume", job.terms.job_id)
        return None
    return checkpoint


def _train(
    job: AcceptedJob, dtrain: Any, env: JobEnvironment
) -> Iterator[Progress | tuple[Any, dict[str, Any]]]:
    """Train (or resume) the job's booster; yields progress, then (booster, history)."""
    import xgboost as xgb

    terms = job.terms
    params = terms.train_params()
    checkpoint = _load_checkpoint(job, env)
    done = checkpoint.rounds if checkpoint else 0
    history = checkpoint.history if checkpoint else {}
    booster = xgb.Booster(model_file=bytearray(checkpoint.model)) if checkpoint else None
    if checkpoint is not None:
        yield Progress("checkpoint", f"resumed after round {done}/{terms.num_rounds}")
    if done == terms.num_rounds:
        yield booster, history
        return
    every = max(1, terms.num_rounds // 10)
    store = env.checkpoints if resumable(params) else None

    class Rounds(xgb.callback.TrainingCallback):
        """Every ``every`` rounds: save a checkpoint, then report progress."""

        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            # Not ``epoch``: it restarts at 0 when training resumes from a model.
            finished = int(model.num_boosted_rounds())
            if finished % every == 0 and finished < terms.num_rounds:
                # Saved before it is reported: a "round N" event means round N is safe.
                if store is not None:
                    current = {k: {m: list(v) for m, v in d.items()} for k, d in evals_log.items()}
                    saved = Checkpoint(
                        finished,
                        False,
                        _merge_history(history, current),
                        bytes(model.save_raw("ubj")),
                    )
                    store.write(checkpoint_name(job), saved.to_bytes(job))
                if env.emit is not None:
                    env.emit(Progress("round", f"round {finished}/{terms.num_rounds}"))
            return False

    new_history: dict[str, Any] = {}
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=terms.num_rounds - done,
        evals=[(dtrain, "train")] if "metrics" in terms.outputs else [],
        evals_result=new_history,
        verbose_eval=False,
        xgb_model=booster,
        callbacks=[Rounds()],
    )
    history = _merge_history(history, new_history)
    if env.checkpoints is not None:
        # The finished model is kept (encrypted) for re-runs and for inference.
        final = Checkpoint(terms.num_rounds, True, history, bytes(booster.save_raw("ubj")))
        env.checkpoints.write(checkpoint_name(job), final.to_bytes(job))
    yield booster, history


def run(
    identity: EnclaveIdentity, job: AcceptedJob, env: JobEnvironment | None = None
) -> Iterator[Progress | ReleasedOutput | bytes]:
    """Decrypt, join, train and release; yields progress, outputs, then the signed statement."""
    import xgboost as xgb

    env = env or JobEnvironment()
    terms = job.terms
    started = time.perf_counter()
    tables = []
    for dataset_id, _ in terms.datasets:
        blob = bytes(job.received.pop(dataset_id, b""))
        table = _open_dataset(identity, job.manifests[dataset_id], blob)
        del blob  # the ciphertext is no longer needed: keep the peak down
        check_table(dataset_id, table, terms)
        tables.append(table)
    joined = _join(tables, job)
    del tables
    rows = joined.num_rows
    features = len([n for n in joined.column_names if n not in (terms.label, terms.id_column)])
    # float32 matrix, DMatrix copy, `hist` index, gradients, histograms: the
    # factor and its measurements are in libos.limits (XGBOOST_HIST_FACTOR).
    needed = limits.estimate_xgboost_bytes(rows, features)
    # Before the matrix exists: a job too large for the enclave fails here,
    # naming the limit and the figure, instead of dying mid-allocation.
    env.check_allocation(
        needed,
        f"the feature matrix and XGBoost training of job {terms.job_id!r} ({rows} rows × "
        f"{features} features × 4 bytes × {limits.XGBOOST_HIST_FACTOR:g} + "
        f"{limits.XGBOOST_FIXED_BYTES >> 20} MiB)",
    )
    x, y, names = feature_matrix(joined, terms.label, terms.id_column)
    del joined
    # Each data set passed check_table; the joined labels are checked again as one.
    check_labels(
        terms.objective,
        summarize_labels(terms.label, y, "the joined data"),
        terms.params,
        "the joined data",
    )
    opened = time.perf_counter()
    yield Progress("timing", f"decrypt+join {opened - started:.3f}s")
    yield Progress(
        "progress",
        f"training on {x.shape[0]} rows, {x.shape[1]} features, {terms.num_rounds} rounds",
    )
    with _stage("building XGBoost's training matrix"):
        dtrain = xgb.DMatrix(x, label=y, feature_names=names)
    booster: Any = None
    history: dict[str, Any] = {}
    with _stage("training with XGBoost"):
        for item in _train(job, dtrain, env):
            if isinstance(item, Progress):
                yield item
            else:
                booster, history = item
    trained = time.perf_counter()
    yield Progress("timing", f"train {trained - opened:.3f}s")
    artefacts: dict[str, bytes] = {}
    if "model" in terms.outputs:
        artefacts["model"] = bytes(booster.save_raw(raw_format="json"))
    if "metrics" in terms.outputs:
        artefacts["metrics"] = canonical.dumps(
            {"rows": int(x.shape[0]), "features": names, "train": history.get("train", {})}
        )
    records = []
    for name, data in artefacts.items():
        content_key = os.urandom(32)
        ciphertext = stream.seal_stream(content_key, data, f"{terms.job_id}/{name}".encode())
        wrapped = {
            r.signing_key.hex: hpke.wrap_key(
                content_key, r.hpke_key, hpke.result_key_info(terms.job_id, name, r.hpke_key)
            )
            for r in terms.recipients
        }
        records.append(OutputRecord(name, canonical.sha256_hex(ciphertext), wrapped))
        yield ReleasedOutput(name, ciphertext)
    statement = ResultStatement(
        job_id=terms.job_id,
        terms_digest=job.terms_envelope.digest,
        mrenclave=identity.mrenclave,
        outputs=records,
        summary={"rows": int(x.shape[0]), "features": len(names), "rounds": terms.num_rounds},
    )
    released = time.perf_counter()
    yield Progress("timing", f"release {released - trained:.3f}s")
    peak = env.peak_rss_bytes()
    yield Progress(
        "memory",
        f"peak {peak / 2**20:.1f} MiB (matrix and training estimated at {needed / 2**20:.1f} MiB)",
    )
    log.info("job %s released %d outputs, peak memory %d bytes", terms.job_id, len(records), peak)
    yield statement.sign(identity.signing_key).to_bytes()
