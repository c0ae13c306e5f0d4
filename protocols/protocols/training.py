"""How joined tables become XGBoost's input: the rules the enclave trains by, and that any
plaintext check must follow to get the same model.

* **Columns.** Numeric columns (integers, floats, booleans) are features as
  float32, nulls being missing values. Text columns (Arrow ``string`` or
  ``dictionary``) are categorical features: each column's categories are the
  union of its values across the data sets, sorted by their UTF-8 bytes, and
  the training table holds them as a dictionary array over that list
  (:func:`categorize`). XGBoost records the list in the model, so predictions
  map categories the same way; :func:`prediction_table` maps a category the
  model never saw to a missing value.
* **Horizontal join** (:func:`join_horizontal`): the data sets' rows, in terms
  order, each in its own order; every data set has the same columns in the
  same order once its id column is dropped.
* **Vertical join** (:func:`join_vertical`): the rows of the data set holding
  the label, in its order, whose id is in every data set (an inner join on
  the ids; ids of different types are compared as text); the columns of the
  data sets in terms order, each without its id column and, but for the
  label's data set, the label.
* **Feature order**: the joined table's columns in order, but the label.
* **Validation** (:func:`validation_split`): a fraction of the joined rows,
  drawn with the terms' seed, per class for classification objectives.

Errors name the data set and the column, never a value (they leave the
enclave). pyarrow and numpy are imported only when a function runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from protocols.errors import DatasetError

NAMED = Sequence[tuple[str, Any]]  # (data set id, pyarrow.Table) in terms order


def is_numeric(kind: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
    )


def is_categorical(kind: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind)
    )


def is_classification(objective: str) -> bool:
    return objective.startswith(("binary:", "multi:"))


def category_order(values: Iterable[str]) -> list[str]:
    """The agreed order of a column's categories: sorted by UTF-8 bytes, each once."""
    return sorted(set(values), key=lambda v: v.encode("utf-8"))


def _as_text(column: Any) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return pc.cast(column, pa.string())


def categories_of(tables: Iterable[Any], column: str) -> list[str]:
    """The agreed categories of ``column`` across ``tables`` (those that hold it)."""
    import pyarrow.compute as pc

    found: set[str] = set()
    for table in tables:
        if column in table.column_names:
            values = pc.unique(_as_text(table.column(column)).drop_null())
            found.update(values.to_pylist())
    return category_order(found)


def categorize(table: Any, categories: dict[str, list[str]]) -> Any:
    """``table`` with each column named in ``categories`` as a dictionary array over that list.

    A value outside the list becomes missing (null); numeric columns become float32.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = []
    for name in table.column_names:
        column = table.column(name)
        if name in categories:
            dictionary = pa.array(categories[name], pa.string())
            codes = pc.index_in(_as_text(column), value_set=dictionary).cast(pa.int32())
            column = pa.chunked_array(
                [pa.DictionaryArray.from_arrays(chunk, dictionary) for chunk in codes.chunks],
                pa.dictionary(pa.int32(), pa.string()),
            )
        elif is_numeric(column.type):
            column = column.cast(pa.float32(), safe=False)
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def _check_label(named: NAMED, label: str) -> str:
    """The one data set that holds the label (vertical jobs)."""
    holders = [dataset_id for dataset_id, table in named if label in table.column_names]
    if not holders:
        raise DatasetError(f"no data set holds the label column {label!r}")
    if len(holders) > 1:
        raise DatasetError(
            f"the label column {label!r} is in more than one data set "
            f"({', '.join(repr(h) for h in holders)}); a vertical join takes it from one"
        )
    return holders[0]


def _ids(dataset_id: str, table: Any, id_column: str | None) -> Any:
    import pyarrow.compute as pc

    if id_column is None or id_column not in table.column_names:
        raise DatasetError(f"data set {dataset_id!r} has no id column {id_column!r}")
    ids = table.column(id_column)
    if ids.null_count:
        raise DatasetError(
            f"data set {dataset_id!r} id column {id_column!r} has {ids.null_count} missing ids"
        )
    repeated = len(ids) - len(pc.unique(ids))
    if repeated:
        raise DatasetError(
            f"data set {dataset_id!r} id column {id_column!r} has {repeated} repeated ids; "
            "a vertical join needs each id once"
        )
    return ids


def join_vertical(
    named: NAMED,
    id_columns: dict[str, str | None],
    label: str,
    min_rows: int = 1,
    consume: bool = False,
) -> Any:
    """The inner join of ``named`` on their id columns (see the module docstring).

    With ``consume`` (``named`` must then be a list), each data set's table is
    dropped from ``named`` as soon as its rows are taken, so the join holds the
    inputs and the joined rows together only one data set at a time.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    holder = _check_label(named, label)
    ids = {d: _ids(d, t, id_columns.get(d)) for d, t in named}
    owner_of: dict[str, str] = {}
    for dataset_id, table in named:
        for name in table.column_names:
            if name in (id_columns.get(dataset_id), label):
                continue
            if name in owner_of:
                raise DatasetError(
                    f"the feature column {name!r} is in data sets {owner_of[name]!r} and "
                    f"{dataset_id!r}; a vertical join needs each feature once: rename one"
                )
            owner_of[name] = dataset_id
    anchor = ids[holder]
    text = len({ids[d].type for d in ids}) > 1
    key = _as_text(anchor) if text else anchor
    keep = pa.chunked_array([pa.array([True] * len(anchor), pa.bool_())])
    positions: dict[str, Any] = {}
    for dataset_id, _ in named:
        if dataset_id == holder:
            continue
        other = _as_text(ids[dataset_id]) if text else ids[dataset_id]
        found = pc.index_in(key, value_set=other.combine_chunks())
        positions[dataset_id] = found
        keep = pc.and_(keep, pc.is_valid(found))
    rows = int(pc.sum(keep).as_py() or 0)
    if rows < min_rows:
        raise DatasetError(
            f"the joined data has fewer rows than the terms' min_rows = {min_rows}: the job "
            "does not train on so small an intersection"
        )
    columns: list[Any] = []
    names: list[str] = []
    for index, (dataset_id, table) in enumerate(list(named)):
        wanted = [
            n
            for n in table.column_names
            if n != id_columns.get(dataset_id) and (n != label or dataset_id == holder)
        ]
        table = table.select(wanted)
        if dataset_id == holder:
            part = table.filter(keep)
        else:
            part = table.take(pc.filter(positions[dataset_id], keep))
        del table
        if consume:
            named[index] = (dataset_id, None)  # type: ignore[index]
        columns.extend(part.columns)
        names.extend(part.column_names)
        del part
    return pa.table(columns, names=names)


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
        if not mine.type.equals(theirs.type) and not (
            is_categorical(mine.type) and is_categorical(theirs.type)
        ):
            return (
                f"has column {theirs.name!r} of type {theirs.type}, the first data set {mine.type}"
            )
    return "differs in column metadata"


def join_horizontal(named: NAMED, id_columns: dict[str, str | None], min_rows: int = 1) -> Any:
    """The union of the rows of ``named`` (see the module docstring)."""
    import pyarrow as pa

    tables = []
    for dataset_id, table in named:
        id_column = id_columns.get(dataset_id)
        if id_column is not None and id_column in table.column_names:
            table = table.drop_columns([id_column])
        tables.append((dataset_id, table))
    first_id, first = tables[0]
    for dataset_id, table in tables[1:]:
        names_equal = table.column_names == first.column_names
        types_equal = all(
            a.type.equals(b.type) or (is_categorical(a.type) and is_categorical(b.type))
            for a, b in zip(first.schema, table.schema, strict=False)
        )
        if not (names_equal and types_equal):
            raise DatasetError(
                f"horizontal join needs equal schemas; data set {dataset_id!r} "
                f"{_first_difference(first.schema, table.schema)} (first data set {first_id!r})"
            )
    text = [n for n in first.column_names if is_categorical(first.schema.field(n).type)]
    unified = [
        pa.table(
            [_as_text(t.column(n)) if n in text else t.column(n) for n in t.column_names],
            names=t.column_names,
        )
        for _, t in tables
    ]
    joined = pa.concat_tables(unified)
    if joined.num_rows < min_rows:
        raise DatasetError(
            f"the joined data has fewer rows than the terms' min_rows = {min_rows}: the job "
            "does not train on so few rows"
        )
    return joined


def training_table(joined: Any, label: str) -> tuple[Any, Any, list[str]]:
    """(features as an Arrow table with agreed categories, float32 labels, feature names)."""
    import numpy as np

    if label not in joined.column_names:
        raise DatasetError(f"label column {label!r} is not in the data")
    names = [n for n in joined.column_names if n != label]
    categories = {
        n: categories_of([joined], n) for n in names if is_categorical(joined.schema.field(n).type)
    }
    features = categorize(joined.select(names), categories)
    labels = joined.column(label).to_numpy(zero_copy_only=False).astype(np.float32)
    return features, labels, names


def prediction_table(table: Any, categories: dict[str, list[str]], names: list[str]) -> Any:
    """A table to predict on with a model trained on ``names`` with ``categories``: its
    columns in the model's order, each category the model never saw as missing."""
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise DatasetError(f"the data lacks the model's columns {', '.join(map(repr, missing))}")
    return categorize(table.select(names), {n: c for n, c in categories.items() if n in names})


def validation_split(labels: Any, fraction: float, seed: int, stratify: bool) -> tuple[Any, Any]:
    """(training rows, validation rows) as sorted index arrays.

    Each class (or, without ``stratify``, all rows) gives round(fraction × its
    rows) rows to validation, drawn by a permutation seeded with ``seed``.
    """
    import numpy as np

    y = np.asarray(labels)
    rng = np.random.RandomState(seed % 2**32)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(len(y))]
    chosen = []
    for rows in groups:
        take = int(np.floor(fraction * len(rows) + 0.5))
        chosen.append(rows[rng.permutation(len(rows))[:take]])
    valid = np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=np.int64)
    train = np.setdiff1d(np.arange(len(y)), valid, assume_unique=True)
    if fraction > 0 and (len(valid) == 0 or len(train) == 0):
        raise DatasetError(
            f"a validation fraction of {fraction} leaves no rows for training or validation"
        )
    return train, valid
