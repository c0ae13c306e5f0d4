"""Training: XGBoost's matrices and boosting rounds, evaluation at a stride, resumable checkpoints.

The training table becomes a ``QuantileDMatrix`` fed batch by batch from the
Arrow table (for ``tree_method`` hist, the default: the same cuts and the
same model as a ``DMatrix`` of the whole table, without a second copy of the
data), split into training and validation rows by the terms' seed
(protocols.training.validation_split). Released metrics are evaluated on the
validation rows when there are some, else on the training rows, every
``metrics_every`` rounds and after the last; early stopping watches the
validation rows every round, as XGBoost's own ``early_stopping_rounds`` does.

Only terms with live metrics (``release.live_metrics``) let each evaluation
out while training, as ``metric`` events in the clear (protocols.live_metrics:
round, data, metric name and the value rounded); other jobs report rounds only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from enclave_worker.jobs.consent import AcceptedJob
from enclave_worker.jobs.environment import JobEnvironment, JobProgress
from enclave_worker.jobs.tables import TrainingData
from protocols import canonical, live_metrics, training
from protocols.documents import JobTerms
from protocols.errors import FormatError, IntegrityError

log = logging.getLogger(__name__)

# Parameters that make XGBoost draw random numbers while it trains. With any of
# them below 1 (or gradient-based sampling, or the DART booster) a run resumed
# from a checkpoint does not continue the random stream of an uninterrupted run,
# so its model differs (checked with XGBoost 3.2: 10 + 10 rounds ≠ 20 rounds
# with subsample = 0.8).
_SAMPLING_PARAMS = ("subsample", "colsample_bytree", "colsample_bylevel", "colsample_bynode")
# Version 2: the history holds the evaluated curves and their rounds (evaluation at a stride).
CHECKPOINT_VERSION = 2
# Rows handed to XGBoost at a time while it builds its matrices: about this many
# bytes of float32 values (it copies each batch, and its sketch grows with it).
BATCH_BYTES = 16 << 20


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


def resumable_job(terms: JobTerms) -> bool:
    """Whether the job may resume mid-way: :func:`resumable` parameters and no early stopping.

    Early stopping keeps its state (best score, rounds without improvement) in
    its callback, which a resumed run would start afresh; such jobs keep only
    their finished model.
    """
    return resumable(terms.train_params()) and terms.early_stopping_rounds is None


def checkpoint_name(job: AcceptedJob) -> str:
    """Checkpoints are keyed by job id and terms digest: other terms never resume from them."""
    return f"checkpoints/{job.terms.job_id}/{job.terms_envelope.digest}.xgb"


class StaleCheckpointError(FormatError):
    """A checkpoint of these terms written by a worker with another checkpoint format."""


@dataclass
class Checkpoint:
    """A booster after ``rounds`` rounds, with the evaluation history so far.

    ``history`` is :meth:`Evaluation.to_dict`: the curves and the rounds they
    were evaluated at.
    """

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
            header.get("job_id") != job.terms.job_id
            or header.get("terms_digest") != job.terms_envelope.digest
        ):
            raise IntegrityError(f"{what} belongs to other job terms")
        if header.get("version") != CHECKPOINT_VERSION:
            raise StaleCheckpointError(
                f"{what} has version {header.get('version')!r}, this worker writes "
                f"{CHECKPOINT_VERSION}"
            )
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


@dataclass
class Evaluation:
    """Released metrics so far: ``curves[data][metric]`` evaluated at ``rounds`` (1-based)."""

    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    rounds: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"curves": self.curves, "evaluated_rounds": self.rounds}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Evaluation:
        curves = doc.get("curves", {})
        rounds = doc.get("evaluated_rounds", [])
        return cls(
            {d: {m: [float(v) for v in vs] for m, vs in ms.items()} for d, ms in curves.items()},
            [int(r) for r in rounds],
        )

    def evaluate(self, model: Any, dmatrix: Any, name: str, finished: int) -> dict[str, float]:
        """Evaluate ``model`` after round ``finished`` on ``dmatrix``, as XGBoost's own
        evaluation does (``eval_set``, read from its text the way its callbacks read it);
        returns the values by metric."""
        text = model.eval_set([(dmatrix, name)], finished - 1)
        values = {}
        for item in text.split()[1:]:
            key, value = item.rsplit(":", 1)
            data_name, metric = key.split("-", 1)
            self.curves.setdefault(data_name, {}).setdefault(metric, []).append(float(value))
            values[metric] = float(value)
        self.rounds.append(finished)
        return values


@dataclass
class Matrices:
    """XGBoost's training (and validation) matrices, and which joined rows each holds."""

    train: Any
    validation: Any | None
    train_rows: Any | None  # sorted indices into the joined rows; None: all of them
    validation_rows: Any | None

    @property
    def rows(self) -> int:
        return int(self.train.num_row())

    @property
    def validation_count(self) -> int:
        return 0 if self.validation is None else int(self.validation.num_row())


def _quantile(params: dict[str, Any]) -> bool:
    """Whether XGBoost trains on quantised data (``hist``, its default since 2.0)."""
    return params.get("tree_method", "hist") in ("hist", "auto") and (
        params.get("booster", "gbtree") != "gblinear"
    )


def matrices(data: TrainingData, terms: JobTerms) -> Matrices:
    """Split the joined rows (protocols.training.validation_split) and build XGBoost's matrices.

    For ``hist`` a ``QuantileDMatrix`` reads the Arrow table in batches of
    about :data:`BATCH_BYTES`, in order: XGBoost sketches each column as the
    rows stream by, which gives the cuts — and the model — of a ``DMatrix``
    of the whole table (the worker's tests compare the models), and keeps no
    float copy of the data. Validation rows are quantised with the training
    rows' cuts (``ref``), as XGBoost requires.
    """
    import numpy as np
    import xgboost as xgb

    params = terms.train_params()
    labels = data.labels
    train_rows = validation_rows = None
    if terms.validation_fraction > 0:
        train_rows, validation_rows = training.validation_split(
            labels,
            terms.validation_fraction,
            terms.seed,
            stratify=training.is_classification(terms.objective),
        )
    nthread = params.get("nthread")
    nthread = nthread if isinstance(nthread, int) and not isinstance(nthread, bool) else None

    def mask_of(rows: Any) -> Any:
        if rows is None:
            return None
        mask = np.zeros(len(labels), dtype=bool)
        mask[rows] = True
        return mask

    if _quantile(params):
        max_bin = params.get("max_bin", 256)
        dtrain = xgb.QuantileDMatrix(
            _batches(data.features, labels, mask_of(train_rows)),
            max_bin=max_bin,
            enable_categorical=True,
            nthread=nthread,
        )
        dvalid = None
        if validation_rows is not None:
            dvalid = xgb.QuantileDMatrix(
                _batches(data.features, labels, mask_of(validation_rows)),
                max_bin=max_bin,
                enable_categorical=True,
                nthread=nthread,
                ref=dtrain,
            )
        return Matrices(dtrain, dvalid, train_rows, validation_rows)

    def whole(rows: Any) -> Any:
        import pyarrow as pa

        table = data.features if rows is None else data.features.take(pa.array(rows))
        y = labels if rows is None else labels[rows]
        return xgb.DMatrix(table, label=y, enable_categorical=True, nthread=nthread)

    dvalid = whole(validation_rows) if validation_rows is not None else None
    return Matrices(whole(train_rows), dvalid, train_rows, validation_rows)


def _batches(features: Any, labels: Any, mask: Any) -> Any:
    """An ``xgboost.DataIter`` over the rows of ``features`` (those of ``mask``), in order."""
    import pyarrow as pa
    import xgboost as xgb

    step = max(1024, BATCH_BYTES // (4 * max(features.num_columns, 1)))

    class Batches(xgb.DataIter):
        def __init__(self) -> None:
            super().__init__(release_data=True)
            self._start = 0

        def next(self, input_data: Any) -> bool:
            while self._start < features.num_rows:
                start, stop = self._start, min(self._start + step, features.num_rows)
                self._start = stop
                part, y = features.slice(start, stop - start), labels[start:stop]
                if mask is not None:
                    keep = mask[start:stop]
                    if not keep.any():
                        continue
                    part, y = part.filter(pa.array(keep)), y[keep]
                input_data(data=part, label=y)
                return True
            return False

        def reset(self) -> None:
            self._start = 0

    return Batches()


@dataclass
class Trained:
    """A trained booster and what its released metrics report."""

    booster: Any
    evaluation: Evaluation
    best_iteration: int | None = None
    best_score: float | None = None

    @property
    def rounds(self) -> int:
        return int(self.booster.num_boosted_rounds())


def _load_checkpoint(job: AcceptedJob, env: JobEnvironment) -> Checkpoint | None:
    """The job's checkpoint if one exists and may be used for these terms."""
    if env.checkpoints is None:
        return None
    data = env.checkpoints.read(checkpoint_name(job))
    if data is None:
        return None
    try:
        checkpoint = Checkpoint.from_bytes(data, job)
    except StaleCheckpointError as exc:
        log.info("job %s: %s; training from the start", job.terms.job_id, exc)
        return None
    if not checkpoint.complete and not resumable_job(job.terms):
        log.info("job %s: checkpoint ignored, the job cannot resume mid-way", job.terms.job_id)
        return None
    return checkpoint


def _finished(booster: Any, evaluation: Evaluation) -> Trained:
    best_iteration = best_score = None
    if booster.attr("best_iteration") is not None:
        best_iteration, best_score = int(booster.best_iteration), float(booster.best_score)
    return Trained(booster, evaluation, best_iteration, best_score)


def train(job: AcceptedJob, data: Matrices, env: JobEnvironment) -> Iterator[JobProgress | Trained]:
    """Train (or resume) the job's booster; yields progress, then :class:`Trained`."""
    import xgboost as xgb

    terms = job.terms
    params = terms.train_params()
    checkpoint = _load_checkpoint(job, env)
    done = checkpoint.rounds if checkpoint else 0
    evaluation = Evaluation.from_dict(checkpoint.history) if checkpoint else Evaluation()
    booster = xgb.Booster(model_file=bytearray(checkpoint.model)) if checkpoint else None
    if checkpoint is not None:
        yield JobProgress("checkpoint", f"resumed after round {done}/{terms.num_rounds}")
    if checkpoint is not None and checkpoint.complete:
        yield _finished(booster, evaluation)
        return
    every = max(1, terms.num_rounds // 10)
    store = env.checkpoints if resumable_job(terms) else None
    early = terms.early_stopping_rounds
    watched = (
        (data.validation, "validation") if data.validation is not None else (data.train, "train")
    )
    # Early stopping evaluates the validation rows every round itself; otherwise the
    # released metrics are evaluated here, at the stride and after the last round.
    stride = terms.metrics_every
    evaluate = "metrics" in terms.outputs and early is None
    reported: set[int] = set()

    def report(finished: int, values: dict[str, float]) -> None:
        """Metric events for one evaluation, if (and only if) the terms let them out."""
        if not terms.live_metrics or env.emit is None or finished in reported:
            return
        reported.add(finished)
        for metric, value in values.items():
            point = live_metrics.MetricPoint(finished, terms.num_rounds, watched[1], metric, value)
            env.emit(JobProgress(live_metrics.KIND, point.to_text()))

    class Rounds(xgb.callback.TrainingCallback):
        """Evaluate at the stride; every ``every`` rounds save a checkpoint, then report."""

        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            # Not ``epoch``: it restarts at 0 when training resumes from a model.
            finished = int(model.num_boosted_rounds())
            at_stride = bool(stride) and finished % (stride or 1) == 0
            if evaluate and (finished == terms.num_rounds or at_stride):
                report(finished, evaluation.evaluate(model, *watched, finished))
            elif early is not None and at_stride:
                # XGBoost evaluated the validation rows this round for early stopping.
                report(finished, {m: float(v[-1]) for m, v in evals_log["validation"].items()})
            if finished % every == 0 and finished < terms.num_rounds:
                # Saved before it is reported: a "round N" event means round N is safe.
                if store is not None:
                    saved = Checkpoint(
                        finished, False, evaluation.to_dict(), bytes(model.save_raw("ubj"))
                    )
                    store.write(checkpoint_name(job), saved.to_bytes(job))
                if env.emit is not None:
                    env.emit(JobProgress("round", f"round {finished}/{terms.num_rounds}"))
            return False

    history: dict[str, Any] = {}
    booster = xgb.train(
        params,
        data.train,
        num_boost_round=terms.num_rounds - done,
        evals=[(data.validation, "validation")] if early is not None else [],
        early_stopping_rounds=early,
        evals_result=history,
        verbose_eval=False,
        xgb_model=booster,
        callbacks=[Rounds()],
    )
    if early is not None:
        trained = int(booster.num_boosted_rounds())
        evaluation = Evaluation(
            {"validation": {m: [float(v) for v in vs] for m, vs in history["validation"].items()}},
            list(range(1, trained + 1)),
        )
        report(trained, {m: vs[-1] for m, vs in evaluation.curves["validation"].items()})
    if env.checkpoints is not None:
        # The finished model is kept (encrypted) for re-runs and for inference.
        final = Checkpoint(
            int(booster.num_boosted_rounds()),
            True,
            evaluation.to_dict(),
            bytes(booster.save_raw("ubj")),
        )
        env.checkpoints.write(checkpoint_name(job), final.to_bytes(job))
    yield _finished(booster, evaluation)
