"""From checked data sets to XGBoost's input, by the shared rules of protocols.training.

Each data set is checked alone first (:func:`check_table`), then the data
sets are joined — horizontally or vertically, as the terms say — and the
joined rows become the training table: numeric columns as float32, text
columns as categories agreed across the data sets (:class:`TrainingData`).
The rules live in :mod:`protocols.training`, so a plaintext check that
follows them trains the same model.

Errors leave the enclave (as the job's error, in events and in the host's
logs), so every error raised here names the data set, the column and the kind
of problem, never a value; exceptions of numpy, Arrow and XGBoost, whose texts
may quote values, are turned into such errors at each stage
(:func:`value_free_errors`) and their text is dropped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from protocols import training
from protocols.documents import JobTerms
from protocols.errors import DatasetError, DetenteError
from protocols.objectives import check_labels, summarize_labels


@contextlib.contextmanager
def value_free_errors(what: str) -> Iterator[None]:
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


def check_table(dataset_id: str, table: Any, terms: JobTerms) -> None:
    """Check one data set before any join; errors name the data set and column.

    Every column but the id column is a feature — numbers (finite or missing)
    or text (categories) — or the label, which must be numeric, present in
    every row and fit for the objective. Every data set of a horizontal job
    holds the label; in a vertical job only the one that does is checked for
    it here (the join requires exactly one).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    where = f"data set {dataset_id!r}"
    label = terms.label
    id_column = terms.id_column_of(dataset_id)
    if label not in table.column_names and terms.join == "horizontal":
        raise DatasetError(f"{where} has no label column {label!r}")
    for name in table.column_names:
        if name == id_column:
            continue
        kind = table.schema.field(name).type
        if name == label:
            if not training.is_numeric(kind):
                raise DatasetError(
                    f"{where} label column {label!r} holds {kind} values: labels must be numbers"
                )
            continue
        if training.is_categorical(kind):
            _check_not_an_id(where, name, table.column(name), id_column)
            continue
        if not training.is_numeric(kind):
            hint = (
                "if it identifies rows, propose the job with --id naming it"
                if id_column is None
                else "convert it to numbers or text, or leave it out"
            )
            raise DatasetError(
                f"{where} column {name!r} holds {kind} values, neither numbers nor text: {hint}"
            )
        if pa.types.is_floating(kind):
            with value_free_errors(f"checking {where} column {name!r}"):
                infinite = int(pc.sum(pc.is_inf(table.column(name))).as_py() or 0)
            if infinite:
                raise DatasetError(
                    f"{where} column {name!r} has {infinite} infinite values; XGBoost needs "
                    "finite numbers or missing values"
                )
    if label not in table.column_names:
        return
    column = table.column(label)
    if column.null_count:
        raise DatasetError(f"{where} label column {label!r} has {column.null_count} missing values")
    with value_free_errors(f"reading {where} label column {label!r}"):
        labels = column.to_numpy(zero_copy_only=False).astype(np.float64)
    check_labels(terms.objective, summarize_labels(label, labels, where), terms.params, where)


# A text column with a different value in each of at least this many rows is refused.
ID_LIKE_ROWS = 10


def _check_not_an_id(where: str, name: str, column: Any, id_column: str | None) -> None:
    """Refuse a text feature whose every value differs, like an id's.

    It cannot help the model, and a model records the categories of its text
    features: every recipient would read every value.
    """
    import pyarrow.compute as pc

    present = len(column) - column.null_count
    if present < ID_LIKE_ROWS:
        return
    with value_free_errors(f"counting the categories of {where} column {name!r}"):
        distinct = len(pc.unique(column.drop_null()))
    if distinct == present:
        hint = (
            "propose the job with --id naming it"
            if id_column is None
            else "leave it out, or make it the data set's id column"
        )
        raise DatasetError(
            f"{where} column {name!r} holds text with a different value in every row, like "
            f"an id; as a feature each value would be recorded in the model: {hint}"
        )


@dataclass
class TrainingData:
    """The joined rows as XGBoost's input, and what the release needs to know about them.

    ``features`` is an Arrow table (float32 and dictionary columns over the
    agreed categories, in feature order); ``labels`` float32. For horizontal
    jobs ``parts`` gives each data set's rows in join order — (data set id,
    rows, id column name or None, its ids or None) — so predictions go back to
    their owners; vertical jobs keep none (their predictions are not released).
    """

    features: Any
    labels: Any
    names: list[str]
    joined_rows: int
    parts: list[tuple[str, int, str | None, Any]] = field(default_factory=list)


def joined_table(named: list[tuple[str, Any]], terms: JobTerms) -> Any:
    """The data sets (checked, in terms order) joined as the terms say (protocols.training)."""
    id_columns = {dataset_id: terms.id_column_of(dataset_id) for dataset_id, _ in named}
    with value_free_errors("joining the data sets"):
        if terms.join == "vertical":
            # consume: each data set's table goes as soon as its rows are joined.
            return training.join_vertical(
                named, id_columns, terms.label, terms.min_rows, consume=True
            )
        return training.join_horizontal(named, id_columns, terms.min_rows)


def training_data(named: list[tuple[str, Any]], joined: Any, terms: JobTerms) -> TrainingData:
    """The training table of ``joined`` (protocols.training.training_table), labels checked."""
    parts: list[tuple[str, int, str | None, Any]] = []
    if terms.join == "horizontal" and "predictions" in terms.outputs:
        for dataset_id, table in named:
            id_column = terms.id_column_of(dataset_id)
            ids = None
            if id_column is not None and id_column in table.column_names:
                # A copy: the ids alone, not the record batches they were read with.
                ids = table.column(id_column).combine_chunks()
            else:
                id_column = None
            parts.append((dataset_id, table.num_rows, id_column, ids))
    with value_free_errors("building the training table"):
        features, labels, names = training.training_table(joined, terms.label)
    # Each data set's labels passed check_table; the joined labels are checked again as one.
    where = "the joined data"
    check_labels(terms.objective, summarize_labels(terms.label, labels, where), terms.params, where)
    return TrainingData(features, labels, names, joined.num_rows, parts)
