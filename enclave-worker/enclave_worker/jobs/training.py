"""Training: XGBoost's boosting rounds, with checkpoints a re-run of the same terms resumes from."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from enclave_worker.jobs.consent import AcceptedJob
from enclave_worker.jobs.environment import JobEnvironment, JobProgress
from protocols import canonical
from protocols.errors import FormatError, IntegrityError

log = logging.getLogger(__name__)

# Parameters that make XGBoost draw random numbers while it trains. With any of
# them below 1 (or gradient-based sampling, or the DART booster) a run resumed
# from a checkpoint does not continue the random stream of an uninterrupted run,
# so its model differs (checked with XGBoost 3.2: 10 + 10 rounds ≠ 20 rounds
# with subsample = 0.8).
_SAMPLING_PARAMS = ("subsample", "colsample_bytree", "colsample_bylevel", "colsample_bynode")
CHECKPOINT_VERSION = 1


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


def train(
    job: AcceptedJob, dtrain: Any, env: JobEnvironment
) -> Iterator[JobProgress | tuple[Any, dict[str, Any]]]:
    """Train (or resume) the job's booster; yields progress, then (booster, history)."""
    import xgboost as xgb

    terms = job.terms
    params = terms.train_params()
    checkpoint = _load_checkpoint(job, env)
    done = checkpoint.rounds if checkpoint else 0
    history = checkpoint.history if checkpoint else {}
    booster = xgb.Booster(model_file=bytearray(checkpoint.model)) if checkpoint else None
    if checkpoint is not None:
        yield JobProgress("checkpoint", f"resumed after round {done}/{terms.num_rounds}")
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
                    env.emit(JobProgress("round", f"round {finished}/{terms.num_rounds}"))
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
