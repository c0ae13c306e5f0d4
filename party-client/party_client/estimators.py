"""scikit-learn style estimators that train through the enclave.

:class:`SecureXGBClassifier` and :class:`SecureXGBRegressor` take, in
:meth:`~SecureXGBClassifier.fit`, the data sets already uploaded (ids,
``owner/dataset-id`` or :class:`~party_client.Dataset` objects), never rows:
``fit`` proposes a job over them, approves it for this party, waits for the
other owners' approvals (``approval_timeout`` seconds) and for training, and
keeps the released model. ``predict_proba`` and ``predict`` then score rows
on this machine with that model (a :class:`pyarrow.Table`, a dict of columns,
a pandas DataFrame or a 2-D array in the model's feature order), or, with
``sealed=True``, send them to the model sealed in the enclave.

>>> from party_client import Party, SecureXGBClassifier
>>> clf = SecureXGBClassifier(Party.from_home(), label="default",
...                           n_estimators=50, max_depth=4)            # doctest: +SKIP
>>> clf.fit(["bank/loans", "insurer/claims"]).predict_proba(new_rows)  # doctest: +SKIP

scikit-learn is optional (``pip install detente[sklearn]``): with it the
estimators are :class:`sklearn.base.BaseEstimator` subclasses (``get_params``,
``set_params``, ``clone``, :class:`sklearn.pipeline.Pipeline`, ``score``);
without it they still fit and predict.

**Pipelines.** ``Pipeline.fit`` passes ``X`` through the steps before the
estimator; :class:`Columns` selects columns of rows and passes data set
references through unchanged, so ``Pipeline([("features", Columns([...])),
("model", SecureXGBClassifier(...))])`` fits on data set ids and predicts on
wider tables.

**Cross-validation is refused.** ``cross_val_score`` and grid search clone
the estimator and fit each clone on a part of ``X``: here, a subset of the
*data sets*, each fold a job every owner must approve, and then score it on
the other data sets, whose rows are not on this machine. A clone that
scikit-learn made refuses to fit (:class:`CrossValidationRefused`), before
anything is proposed. Hold rows out inside the enclave instead:
``validation_fraction=0.2`` (with ``early_stopping_rounds`` if wanted) and
read the released metric from :attr:`SecureXGBClassifier.metrics_`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from protocols.errors import DetenteError, SetupError

if TYPE_CHECKING:
    import xgboost as xgb

    from party_client.api import Job, Party

try:  # scikit-learn is an optional extra: the estimators work without it
    from sklearn.base import BaseEstimator as _Base
    from sklearn.base import ClassifierMixin as _Classifier
    from sklearn.base import RegressorMixin as _Regressor
    from sklearn.base import TransformerMixin as _Transformer

    HAVE_SKLEARN = True
except ImportError:  # pragma: no cover - exercised where sklearn is absent

    class _Base:  # type: ignore[no-redef]
        """get_params/set_params by the constructor's parameters, as scikit-learn's."""

        def get_params(self, deep: bool = True) -> dict[str, Any]:
            import inspect

            names = inspect.signature(type(self).__init__).parameters
            return {n: getattr(self, n) for n in names if n != "self"}

        def set_params(self, **params: Any) -> Any:
            valid = self.get_params()
            for name, value in params.items():
                if name not in valid:
                    raise ValueError(f"{type(self).__name__} has no parameter {name!r}")
                setattr(self, name, value)
            return self

    class _Classifier:  # type: ignore[no-redef]
        pass

    class _Regressor:  # type: ignore[no-redef]
        pass

    class _Transformer:  # type: ignore[no-redef]
        pass

    HAVE_SKLEARN = False


class CrossValidationRefused(DetenteError):
    """A clone made by scikit-learn (cross-validation, grid search) was asked to fit."""


class NotFitted(DetenteError):
    """``predict`` before ``fit``."""


def _is_refs(X: Any) -> bool:
    """Is ``X`` a list of data set references rather than rows?"""
    from party_client.api import Dataset

    return (
        isinstance(X, list | tuple) and len(X) > 0 and all(isinstance(x, str | Dataset) for x in X)
    )


class Columns(_Base, _Transformer):
    """A pipeline step keeping ``names`` of rows (a pyarrow Table, a dict of columns or a
    pandas DataFrame); data set references pass through unchanged (fit's ``X``)."""

    def __init__(self, names: Sequence[str] = ()) -> None:
        self.names = names

    def fit(self, X: Any, y: Any = None) -> Columns:
        return self

    def transform(self, X: Any) -> Any:
        if _is_refs(X):
            return X
        import pyarrow as pa

        table = X if isinstance(X, pa.Table) else pa.table(X)
        missing = [n for n in self.names if n not in table.column_names]
        if missing:
            raise SetupError(f"the rows lack the columns {', '.join(map(repr, missing))}")
        return table.select(list(self.names))


class _SecureXGB(_Base):
    _objective = "binary:logistic"

    def __init__(
        self,
        party: Party | str | None = None,
        *,
        label: str | None = None,
        join: str = "horizontal",
        id_column: str | None = None,
        objective: str | None = None,
        n_estimators: int = 100,
        max_depth: int = 4,
        learning_rate: float = 0.1,
        params: Mapping[str, Any] | None = None,
        recipients: Sequence[str] | None = None,
        validation_fraction: float = 0.0,
        early_stopping_rounds: int | None = None,
        sealed: bool = False,
        queriers: Mapping[str, int] | None = None,
        approval_timeout: float = 600.0,
        on_proposed: Callable[[Job], object] | None = None,
        seed: int = 0,
    ) -> None:
        self.party = party
        self.label = label
        self.join = join
        self.id_column = id_column
        self.objective = objective
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.params = params
        self.recipients = recipients
        self.validation_fraction = validation_fraction
        self.early_stopping_rounds = early_stopping_rounds
        self.sealed = sealed
        self.queriers = queriers
        self.approval_timeout = approval_timeout
        self.on_proposed = on_proposed
        self.seed = seed

    # scikit-learn's clone() calls this (scikit-learn >= 1.3): the clone it returns is one
    # that cross-validation or a search would fit on a part of X.
    def __sklearn_clone__(self) -> Any:
        params = {
            k: v if k == "party" else copy.deepcopy(v)  # a Party is a handle: clones share it
            for k, v in self.get_params(deep=False).items()
        }
        clone = type(self)(**params)
        clone._sklearn_clone = True
        return clone

    def _party(self) -> Party:
        from party_client.api import Party

        if isinstance(self.party, Party):
            return self.party
        if getattr(self, "_opened", None) is None:
            self._opened = Party.from_home(self.party)
        return self._opened

    def fit(self, X: Sequence[Any], y: Any = None) -> Any:
        """Train through the enclave on the uploaded data sets ``X``; returns ``self``.

        ``y`` must be None: the label is a column of the data sets (``label``).
        Raises :class:`~party_client.JobTimeout` if the other owners have not
        approved within ``approval_timeout`` seconds (the job stays proposed).
        """
        if getattr(self, "_sklearn_clone", False):
            raise CrossValidationRefused(
                "this estimator is a clone made by scikit-learn (cross_val_score, a grid "
                "search): fitting it would propose one job per fold on a subset of the data "
                "sets, for every owner to approve, and score it on rows that are not on this "
                "machine. Use validation_fraction= instead: the enclave holds rows out and "
                "releases the metric (estimator.metrics_); nothing was proposed"
            )
        if y is not None:
            raise SetupError(
                "fit takes no y: the label is a column of the uploaded data sets; name it with "
                "label=...; nothing was proposed"
            )
        if not _is_refs(X):
            raise SetupError(
                "fit takes the uploaded data sets (a list of ids, 'owner/dataset-id' or Dataset "
                f"objects), not {type(X).__name__}: rows are trained on only through the "
                "enclave; upload them with Party.upload; nothing was proposed"
            )
        party = self._party()
        params = {"max_depth": self.max_depth, "eta": self.learning_rate, **(self.params or {})}
        outputs = ["metrics"] if self.sealed else ["model", "metrics"]
        job = party.propose(
            list(X),
            join=self.join,
            objective=self.objective or self._objective,
            params=params,
            num_boost_round=self.n_estimators,
            recipients=self.recipients,
            outputs=outputs,
            validation_fraction=self.validation_fraction,
            early_stopping_rounds=self.early_stopping_rounds,
            sealed=self.sealed,
            queriers=dict(self.queriers or {party.name: 1_000_000}) if self.sealed else {},
            label=self.label,
            id_column=self.id_column,
            seed=self.seed,
        )
        self.job_ = job
        if party.home.signing_key().verify_key.hex in job.awaiting:
            party.approve(job, yes=True)  # this party wrote these very terms
        if self.on_proposed is not None:
            self.on_proposed(job)
        job.wait(timeout=self.approval_timeout)
        self.metrics_ = job.metrics()
        self.booster_: xgb.Booster | None = None if self.sealed else job.model()
        if self.booster_ is not None:
            self.feature_names_in_ = list(self.booster_.feature_names or [])
            self.n_features_in_ = len(self.feature_names_in_)
        return self

    # -- prediction -------------------------------------------------------------

    def _raw(self, X: Any) -> Any:
        """The model's output for rows ``X``: locally, or by the sealed model."""
        if getattr(self, "job_", None) is None:
            raise NotFitted(f"{type(self).__name__} is not fitted: call fit(datasets) first")
        if _is_refs(X):
            raise SetupError(
                "predict scores rows on this machine (or by the sealed model); data set ids "
                "name rows that are in the enclave only: give a table, a DataFrame or an array"
            )
        if self.sealed:
            return self._party().predict(self.job_, _as_table(X, None)).to_numpy()
        return _local_predict(self.booster_, X)


def _as_table(X: Any, names: list[str] | None) -> Any:
    import numpy as np
    import pyarrow as pa

    if isinstance(X, pa.Table):
        return X
    if isinstance(X, np.ndarray):
        if names is None:
            raise SetupError(
                "a sealed model is queried by column name: give a table or DataFrame, not an array"
            )
        if X.ndim != 2 or X.shape[1] != len(names):
            raise SetupError(
                f"an array for this model has {len(names)} columns ({', '.join(names)}), in "
                f"that order; got shape {X.shape}"
            )
        return pa.table({n: X[:, i] for i, n in enumerate(names)})
    return pa.table(X)


def _local_predict(booster: Any, X: Any) -> Any:
    """Predict with a released model by the enclave's rules (protocols.training): the
    model's columns in order, its categories mapped as in training."""
    import xgboost as xgb

    from protocols import training

    names = list(booster.feature_names or [])
    table = _as_table(X, names)
    categories = {
        name: values.to_pylist()
        for name, values in booster.get_categories(export_to_arrow=True).to_arrow()
        if values is not None
    }
    ready = training.prediction_table(table, categories, names)
    return booster.predict(xgb.DMatrix(ready, enable_categorical=True))


class SecureXGBClassifier(_Classifier, _SecureXGB):
    """A classifier trained through the enclave (``objective`` ``binary:logistic`` unless
    given: ``multi:softprob`` for several classes). See :mod:`party_client.estimators`."""

    _objective = "binary:logistic"

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities, one column per class."""
        import numpy as np

        raw = np.asarray(self._raw(X), dtype=np.float64)
        if raw.ndim == 1:
            return np.column_stack([1.0 - raw, raw])
        return raw

    def predict(self, X: Any) -> Any:
        """The most probable class (0 … n-1)."""
        return self.predict_proba(X).argmax(axis=1)

    @property
    def classes_(self) -> Any:
        import numpy as np

        return np.arange(int((self.job_.terms.params or {}).get("num_class", 2)))


class SecureXGBRegressor(_Regressor, _SecureXGB):
    """A regressor trained through the enclave (``objective`` ``reg:squarederror`` unless
    given). See :mod:`party_client.estimators`."""

    _objective = "reg:squarederror"

    def predict(self, X: Any) -> Any:
        import numpy as np

        return np.asarray(self._raw(X), dtype=np.float64)
