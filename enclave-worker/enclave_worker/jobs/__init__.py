"""Run one job inside the enclave: consent, intake, join, train, release (docs/protocol.md §5–6).

Consent is checked from the job spec alone, before a byte of data is read:
the terms must be signed by their proposer, allow this enclave's measurement
and not be expired; each data set's manifest must be the one the terms name,
signed by its owner and sealed to this enclave; and every owner must have
approved these exact terms. Only then are data keys unwrapped.

Errors leave the enclave (as the job's error, in events and in the host's
logs), so every error raised here names the data set, the column and the kind
of problem, never a value; exceptions of numpy, Arrow and XGBoost, whose
texts may quote values, are turned into such errors at each stage
(:func:`value_free_errors`) and their text is dropped.

The worker runs :func:`run` in a child process per job (enclave_worker.job_process);
what the code needs from where it runs — the memory limit, peak memory, a way
to report rounds while XGBoost trains, checkpoint storage — comes in a
:class:`JobEnvironment`, so the same code runs in-process in tests and benchmarks.

One module per step:

- ``consent``: :func:`accept` and :class:`AcceptedJob`;
- ``intake``: each data set's chunks opened as they arrive and read into an
  Arrow table, checked against its signed manifest;
- ``tables``: :func:`check_table` for each data set, the horizontal or
  vertical join and the training table (by protocols.training), with
  :func:`value_free_errors`;
- ``training``: XGBoost's matrices and rounds, evaluation at a stride, early
  stopping, :class:`Checkpoint`, :func:`resumable`, :func:`checkpoint_name`;
- ``release``: the outputs (model, metrics, importance, each owner's
  predictions) sealed to their recipients (:class:`ReleasedOutput`) and the
  result statement;
- ``environment``: :class:`JobEnvironment`, :class:`JobProgress`, :class:`CheckpointStore`;
- ``runner``: :func:`run`, the order of the steps, and :func:`memory_estimate`, what a
  job will need (the worker reserves it while the job runs).
"""

from enclave_worker.jobs.consent import AcceptedJob, accept
from enclave_worker.jobs.environment import CheckpointStore, JobEnvironment, JobProgress
from enclave_worker.jobs.release import ReleasedOutput
from enclave_worker.jobs.runner import memory_estimate, run
from enclave_worker.jobs.tables import check_table, value_free_errors
from enclave_worker.jobs.training import Checkpoint, checkpoint_name, resumable, resumable_job

__all__ = [
    "AcceptedJob",
    "Checkpoint",
    "CheckpointStore",
    "JobEnvironment",
    "JobProgress",
    "ReleasedOutput",
    "accept",
    "check_table",
    "checkpoint_name",
    "memory_estimate",
    "resumable",
    "resumable_job",
    "run",
    "value_free_errors",
]
