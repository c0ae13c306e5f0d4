"""The order of a job's steps, from the first ciphertext chunk to the signed result statement."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from enclave_worker.identity import EnclaveIdentity
from enclave_worker.jobs.consent import AcceptedJob
from enclave_worker.jobs.environment import JobEnvironment, JobProgress
from enclave_worker.jobs.intake import Intake
from enclave_worker.jobs.release import (
    PREDICTIONS,
    ReleasedOutput,
    artefacts,
    result_statement,
    seal_output,
)
from enclave_worker.jobs.tables import (
    check_table,
    joined_table,
    training_data,
    value_free_errors,
)
from enclave_worker.jobs.training import Matrices, Trained, matrices, train
from enclave_worker.models.schema import ModelSchema
from enclave_worker.models.store import SealedModel
from libos import limits
from protocols.documents import JobTerms
from protocols.errors import PolicyError

log = logging.getLogger(__name__)


def run(
    identity: EnclaveIdentity,
    job: AcceptedJob,
    chunks: Iterable[tuple[str, bytes | memoryview]],
    env: JobEnvironment | None = None,
) -> Iterator[JobProgress | ReleasedOutput | bytes]:
    """Receive, check, join, train and release; yields progress, outputs, then the statement.

    ``chunks`` are the data sets' ciphertext as (data set id, bytes), in any
    order and pieces; they are opened as they come (jobs.intake).
    """
    env = env or JobEnvironment()
    terms = job.terms
    started = time.perf_counter()
    _check_intake_memory(env, job)
    intake = Intake(identity, job)
    yield from intake.receive(chunks)
    named = intake.tables()
    received = time.perf_counter()
    yield JobProgress("timing", f"intake {received - started:.3f}s")

    for dataset_id, table in named:
        check_table(dataset_id, table, terms)
    needed = _check_memory(env, terms, named)
    joined = joined_table(named, terms)
    data = training_data(named, joined, terms)
    del named, joined
    with value_free_errors("building XGBoost's training matrix"):
        built = matrices(data, terms)
        # What predicting needs of a sealed model: the features and their categories.
        schema = ModelSchema.of_training(data.features, data.names, terms) if terms.sealed else None
    # XGBoost holds the quantised rows now: the Arrow data can go.
    data.features = None
    _release_arrow_memory()
    prepared = time.perf_counter()
    yield JobProgress("timing", f"prepare {prepared - received:.3f}s")
    # A vertical job's row count would tell who reads the events the size of the join.
    shape = f"{len(data.names)} features, {terms.num_rounds} rounds"
    if terms.join == "horizontal":
        shape = f"{built.rows} rows, {shape}"
    yield JobProgress("progress", f"training on {shape}")

    trained: Trained | None = None
    with value_free_errors("training with XGBoost"):
        for item in train(job, built, env):
            if isinstance(item, JobProgress):
                yield item
            else:
                trained = item
    assert trained is not None
    finished = time.perf_counter()
    yield JobProgress("timing", f"train {finished - prepared:.3f}s")

    predictions = None
    if PREDICTIONS in terms.outputs and terms.join == "horizontal":
        with value_free_errors("predicting the data sets' rows"):
            predictions = _predict_rows(trained, built, data.joined_rows)
    records = []
    for artefact in artefacts(job, trained, data, built, predictions):
        released, record = seal_output(terms, artefact)
        records.append(record)
        yield released
    summary: dict[str, Any] = {"features": len(data.names), "rounds": trained.rounds}
    if terms.join == "horizontal":
        summary["rows"] = built.rows
    sealed_model = None
    if schema is not None:
        _seal(env, trained, schema, terms)
        sealed_model = terms.job_id
        yield JobProgress("progress", f"model sealed in the enclave as {sealed_model!r}")
    statement = result_statement(identity, job, records, summary, sealed_model)
    yield JobProgress("timing", f"release {time.perf_counter() - finished:.3f}s")
    peak = env.peak_rss_bytes()
    yield JobProgress(
        "memory",
        f"peak {peak / 2**20:.1f} MiB (training estimated at {needed / 2**20:.1f} MiB more)",
    )
    log.info("job %s released %d outputs, peak memory %d bytes", terms.job_id, len(records), peak)
    yield statement.sign(identity.signing_key).to_bytes()


def _seal(env: JobEnvironment, trained: Trained, schema: ModelSchema, terms: JobTerms) -> None:
    """Hand the model to the worker's model store; returns once it is stored."""
    if env.seal_model is None:
        # The service refuses such terms before any data (models.store); this is a backstop.
        raise PolicyError(
            f"job {terms.job_id!r} seals its model, but this enclave has no model store: it "
            "needs a rollback-protected encrypted mount (docs/libos.md)"
        )
    with value_free_errors("saving the sealed model"):
        raw = bytes(trained.booster.save_raw("ubj"))
    env.seal_model(SealedModel(raw, schema))


def _predict_rows(trained: Trained, built: Matrices, rows: int) -> Any:
    """The final model's predictions on every joined row, in join order."""
    import numpy as np

    booster = trained.booster
    ours = booster.predict(built.train)
    if built.validation is None:
        return ours
    predictions = np.empty((rows, *ours.shape[1:]), dtype=ours.dtype)
    predictions[built.train_rows] = ours
    predictions[built.validation_rows] = booster.predict(built.validation)
    return predictions


def _release_arrow_memory() -> None:
    """Hand memory Arrow's pool keeps for reuse back to the system, for XGBoost to use."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def _rows_bound(terms: JobTerms, rows: list[int]) -> int:
    """The joined rows at most: all rows (horizontal), the fewest of a data set (vertical).

    Public (the manifests sign each row count), so memory errors may say it;
    the size of a vertical join itself they must not.
    """
    return sum(rows) if terms.join == "horizontal" else min(rows)


def memory_estimate(job: AcceptedJob) -> tuple[int, str]:
    """What a job's data sets and their training need, known before any data arrives.

    (bytes, what they are for): the data sets are held as Arrow tables about
    the size of their ciphertext (libos.limits.estimate_job_bytes), from the
    signed manifests' sizes and row counts. The worker reserves it for the job
    while it runs (enclave_worker.slots).
    """
    terms = job.terms
    sealed = sum(m.ciphertext_size for m in job.manifests.values())
    rows = _rows_bound(terms, [m.row_count for m in job.manifests.values()])
    vertical = terms.join == "vertical"
    needed = limits.estimate_job_bytes(sealed, rows, vertical, _outputs(terms))
    what = (
        f"the data sets of job {terms.job_id!r} ({len(job.manifests)} data sets, "
        f"{sealed / 2**20:,.1f} MiB sealed, at most {rows} rows) and their training"
    )
    return needed, what


def _check_intake_memory(env: JobEnvironment, job: AcceptedJob) -> None:
    """Fail the job before any data arrives if its data sets and training cannot fit.

    Checked before the first byte is read (:func:`memory_estimate`), so a job
    too large for the enclave fails before the parties' data moves.
    """
    env.check_allocation(*memory_estimate(job))


def _check_memory(env: JobEnvironment, terms: JobTerms, named: list[tuple[str, Any]]) -> int:
    """Fail the job, naming the limit and the figure, if its training cannot fit; else the need.

    Checked once the data sets are in and before the join, the training table
    and XGBoost's matrices exist: a vertical join's copy of the rows it keeps,
    the columns that become float32 or category codes, and XGBoost's own
    memory (libos.limits.estimate_xgboost_bytes), all for the most rows the
    join can keep.
    """
    import pyarrow as pa

    rows = _rows_bound(terms, [t.num_rows for _, t in named])
    columns = []
    for dataset_id, table in named if terms.join == "vertical" else named[:1]:
        skip = (terms.id_column_of(dataset_id), terms.label)
        columns += [f for f in table.schema if f.name not in skip]
    features = len(columns)
    converted = rows * sum(0 if pa.types.is_float32(f.type) else 4 for f in columns)
    copied = 0
    if terms.join == "vertical":
        copied = sum(t.nbytes * rows // max(t.num_rows, 1) for _, t in named)
    training = limits.estimate_xgboost_bytes(rows, features, outputs=_outputs(terms))
    needed = copied + converted + training
    env.check_allocation(
        needed,
        f"the feature matrix and XGBoost training of job {terms.job_id!r} (at most {rows} "
        f"rows × {features} features; libos.limits.estimate_xgboost_bytes)",
    )
    return needed


def _outputs(terms: JobTerms) -> int:
    """The model's outputs per row: a multiclass model has one per class."""
    num_class = terms.params.get("num_class", 1) if terms.objective.startswith("multi:") else 1
    return num_class if isinstance(num_class, int) and num_class > 0 else 1
