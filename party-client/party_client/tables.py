"""Reading and validating a party's table before it is sealed (DESIGN.md §3.3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protocols.errors import DatasetError

MAX_ROWS = 50_000_000


def read_table(path: Path, label: str, id_column: str | None) -> Any:
    """Read CSV or Parquet, check label, id and feature columns; return an Arrow table.

    Features must be numeric (integers, floats or booleans); missing feature
    values are allowed (XGBoost treats them as missing), a missing label is not.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not path.exists():
        raise DatasetError(f"no such file: {path}")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            table = pq.read_table(path)
        else:
            table = pacsv.read_csv(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"cannot read {path} as {path.suffix or 'CSV'}: {exc}") from None
    names = table.column_names
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
    if table.num_rows == 0:
        raise DatasetError(f"{path} has no rows")
    if table.num_rows > MAX_ROWS:
        raise DatasetError(f"{path} has {table.num_rows} rows, more than {MAX_ROWS}")
    for name in names:
        if name == id_column:
            continue
        column = table.column(name)
        kind = column.type
        if not (
            pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
        ):
            raise DatasetError(_not_numeric(path, name, column))
    if table.column(label).null_count:
        raise DatasetError(
            f"{path}: label column {label!r} has {table.column(label).null_count} missing values"
        )
    return table.combine_chunks()


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


def schema_columns(table: Any) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in table.schema]


def to_ipc(table: Any) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())
