"""Reading and validating a party's table before it is sealed (docs/protocol.md §3).

Everything the enclave would refuse after every owner approved is refused
here, at upload, with the row and column named (the table is the party's own,
so its messages may quote it): missing columns, text in a feature, infinite
values, labels that are missing, duplicate ids. Features and labels are
normalised to float32 — the type the enclave trains on — so two parties whose
files say ``int64`` and ``double`` for the same column still join.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocols.errors import DatasetError
from protocols.objectives import LabelSummary, summarize_labels

MAX_ROWS = 50_000_000
_OTHER_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}


@dataclass(frozen=True)
class PreparedTable:
    """A validated table ready to seal, with the summary of its label."""

    table: Any  # pyarrow.Table
    label: LabelSummary


def _read(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not path.exists():
        raise DatasetError(f"no such file: {path}")
    if path.is_dir():
        raise DatasetError(f"{path} is a folder: name a CSV or Parquet file")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            table = pq.read_table(path)
        else:
            table = pacsv.read_csv(path)
        table.column_names  # noqa: B018 -- decodes the header: a non-UTF-8 name fails here
        return table
    except UnicodeDecodeError:
        raise DatasetError(
            f"{path} is not UTF-8 text (its header has bytes that are not UTF-8): save it "
            "as UTF-8 CSV and upload again"
        ) from None
    except (pa.ArrowException, OSError) as exc:
        kind = "Parquet" if path.suffix.lower() in {".parquet", ".pq"} else "CSV"
        raise DatasetError(f"cannot read {path} as {kind}: {exc}") from None


def _check_delimiter(path: Path, names: list[str]) -> None:
    if len(names) != 1:
        return
    for delimiter, word in _OTHER_DELIMITERS.items():
        if delimiter in names[0]:
            raise DatasetError(
                f"{path} has a single column {names[0][:60]!r}: it looks separated by "
                f"{word}s ({delimiter!r}), and Detente reads comma-separated CSV; save it "
                "with commas (or as Parquet) and upload again"
            )


def read_table(path: Path, label: str, id_column: str | None) -> PreparedTable:
    """Read CSV or Parquet, check label, id and feature columns; return a normalised table.

    Features must be numeric (integers, floats or booleans) and finite;
    missing feature values are allowed (XGBoost treats them as missing), a
    missing label is not; ids must be unique.
    """
    import pyarrow as pa

    table = _read(path)
    names = table.column_names
    _check_delimiter(path, names)
    if len(set(names)) != len(names):
        raise DatasetError(f"{path} has duplicate column names")
    if label not in names:
        raise DatasetError(
            f"{path} has no label column {label!r}; its columns are: {', '.join(names)}"
        )
    if id_column is not None and id_column not in names:
        raise DatasetError(
            f"{path} has no id column {id_column!r}; its columns are: {', '.join(names)}"
        )
    if id_column == label:
        raise DatasetError(f"{path}: the label column cannot also be the id column")
    if table.num_rows == 0:
        raise DatasetError(f"{path} has no rows")
    if table.num_rows > MAX_ROWS:
        raise DatasetError(f"{path} has {table.num_rows} rows, more than {MAX_ROWS}")
    table = table.combine_chunks()
    columns = []
    for name in names:
        column = table.column(name)
        if name == id_column:
            _check_unique_ids(path, name, column)
            columns.append(column)
            continue
        kind = column.type
        if not (
            pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
        ):
            raise DatasetError(_not_numeric(path, name, column))
        # Unsafe: large integers round to the nearest float32, as the enclave would round them.
        values = column.cast(pa.float32(), safe=False)
        if name != label:  # the label summary refuses non-finite labels itself
            _check_finite(path, name, values)
        columns.append(values)
    normalised = pa.table(columns, names=names)
    labels = normalised.column(label)
    if labels.null_count:
        raise DatasetError(f"{path}: label column {label!r} has {labels.null_count} missing values")
    summary = summarize_labels(label, labels.to_numpy(zero_copy_only=False), str(path))
    return PreparedTable(normalised, summary)


def _check_finite(path: Path, name: str, values: Any) -> None:
    import numpy as np

    array = values.to_numpy(zero_copy_only=False)
    infinite = np.flatnonzero(np.isinf(array))
    if infinite.size:
        raise DatasetError(
            f"{path}: column {name!r} has {infinite.size} infinite values (first at row "
            f"{int(infinite[0]) + 1}); XGBoost needs finite numbers: replace them with a "
            "number or leave the cell empty (missing)"
        )


def _check_unique_ids(path: Path, name: str, column: Any) -> None:
    import pyarrow.compute as pc

    if column.null_count:
        raise DatasetError(f"{path}: id column {name!r} has {column.null_count} missing ids")
    counts = pc.value_counts(column)
    repeated = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(repeated):
        first = repeated[0]["values"].as_py()
        rows = [i + 1 for i, v in enumerate(column.to_pylist()) if v == first][:3]
        raise DatasetError(
            f"{path}: id column {name!r} has {len(repeated)} repeated ids; for example "
            f"{str(first)[:40]!r} is on rows {', '.join(map(str, rows))}: each row needs "
            "its own id"
        )


def _not_numeric(path: Path, name: str, column: Any) -> str:
    for row, value in enumerate(column.to_pylist()):
        if value is None:
            continue
        try:
            float(value)
        except (TypeError, ValueError):
            return (
                f"{path}: column {name!r} is not numeric: row {row + 1} holds {str(value)[:40]!r}; "
                "convert it to numbers, drop it, or name it with --id if it is an identifier"
            )
    return f"{path}: column {name!r} has type {column.type}, which is not numeric"


def to_ipc(table: Any) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())
