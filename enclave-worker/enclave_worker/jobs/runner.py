"""The order of a job's steps, from received ciphertext to the signed result statement."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from enclave_worker.identity import EnclaveIdentity
from enclave_worker.jobs.consent import AcceptedJob
from enclave_worker.jobs.environment import JobEnvironment, JobProgress
from enclave_worker.jobs.release import ReleasedOutput, outputs, result_statement, seal_output
from enclave_worker.jobs.tables import feature_matrix, joined_table, value_free_errors
from enclave_worker.jobs.training import train
from libos import limits
from protocols.objectives import check_labels, summarize_labels

log = logging.getLogger(__name__)


def run(
    identity: EnclaveIdentity, job: AcceptedJob, env: JobEnvironment | None = None
) -> Iterator[JobProgress | ReleasedOutput | bytes]:
    """Decrypt, join, train and release; yields progress, outputs, then the signed statement."""
    import xgboost as xgb

    env = env or JobEnvironment()
    terms = job.terms
    started = time.perf_counter()
    joined = joined_table(identity, job)
    rows = joined.num_rows
    features = len([n for n in joined.column_names if n not in (terms.label, terms.id_column)])
    needed = _check_memory(env, terms.job_id, rows, features)
    x, y, names = feature_matrix(joined, terms.label, terms.id_column)
    del joined
    # Each data set passed check_table; the joined labels are checked again as one.
    where = "the joined data"
    check_labels(terms.objective, summarize_labels(terms.label, y, where), terms.params, where)
    opened = time.perf_counter()
    yield JobProgress("timing", f"decrypt+join {opened - started:.3f}s")
    yield JobProgress(
        "progress",
        f"training on {x.shape[0]} rows, {x.shape[1]} features, {terms.num_rounds} rounds",
    )
    with value_free_errors("building XGBoost's training matrix"):
        dtrain = xgb.DMatrix(x, label=y, feature_names=names)
    booster: Any = None
    history: dict[str, Any] = {}
    with value_free_errors("training with XGBoost"):
        for item in train(job, dtrain, env):
            if isinstance(item, JobProgress):
                yield item
            else:
                booster, history = item
    trained = time.perf_counter()
    yield JobProgress("timing", f"train {trained - opened:.3f}s")
    records = []
    for name, data in outputs(terms, booster, history, int(x.shape[0]), names).items():
        released, record = seal_output(terms, name, data)
        records.append(record)
        yield released
    statement = result_statement(identity, job, records, int(x.shape[0]), len(names))
    yield JobProgress("timing", f"release {time.perf_counter() - trained:.3f}s")
    peak = env.peak_rss_bytes()
    yield JobProgress(
        "memory",
        f"peak {peak / 2**20:.1f} MiB (matrix and training estimated at {needed / 2**20:.1f} MiB)",
    )
    log.info("job %s released %d outputs, peak memory %d bytes", terms.job_id, len(records), peak)
    yield statement.sign(identity.signing_key).to_bytes()


def _check_memory(env: JobEnvironment, job_id: str, rows: int, features: int) -> int:
    """Fail the job, naming the limit and the figure, if its training cannot fit; else the need.

    Checked before the matrix exists, so a job too large for the enclave fails
    here instead of dying mid-allocation. The float32 matrix, DMatrix copy,
    ``hist`` index, gradients and histograms: the factor and its measurements
    are in libos.limits (XGBOOST_HIST_FACTOR).
    """
    needed = limits.estimate_xgboost_bytes(rows, features)
    env.check_allocation(
        needed,
        f"the feature matrix and XGBoost training of job {job_id!r} ({rows} rows × "
        f"{features} features × 4 bytes × {limits.XGBOOST_HIST_FACTOR:g} + "
        f"{limits.XGBOOST_FIXED_BYTES >> 20} MiB)",
    )
    return needed
