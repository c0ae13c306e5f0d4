"""Reading and checking a party's table in record batches before it is sealed (docs/protocol.md §3).

Everything the enclave would refuse after every owner approved is refused
here, at upload, with the row and column named (the table is the party's own,
so its messages may quote it): missing columns, text in a numeric column,
infinite values, labels that are missing, duplicate ids.

Each column is one of two kinds (the rules the enclave trains by:
:mod:`protocols.training`):

* **numeric** — integers, floats, booleans: normalised to float32, the type
  the enclave trains on, so two parties whose files say ``int64`` and
  ``double`` for the same column still join;
* **categorical** — text in a CSV file, ``string`` or ``dictionary`` columns
  in Parquet: sent as Arrow ``string`` (the enclave agrees the categories
  across parties).

The kind is inferred from the file (for CSV, from its first block of rows) or
given per column by a schema file (:func:`load_schema`: ``--schema``), which
wins; a text value later in a column read as numeric is an error naming its
row. The label, if there is one, is numeric; the id column, if there is
one, keeps its type.

The file is read in record batches (:class:`TableScan`), so a party never
holds its whole table: each batch is checked and normalised as it passes, the
label is summarised incrementally and only the ids are kept (to check they
are unique at the end).

The kinds and the column plan are in :mod:`party_client.table_schema`, the
CSV, Parquet and Arrow readers in :mod:`party_client.table_sources`; the names
they define that the library uses are importable from here too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from party_client.table_schema import (
    CATEGORICAL,
    FEATURE,
    ID,
    KINDS,
    LABEL,
    NUMERIC,
    Column,
    load_schema,
    plan_columns,
)
from party_client.table_sources import (
    CSV_BLOCK_SIZE,
    PARQUET_BATCH_ROWS,
    PARQUET_SUFFIXES,
    ArrowSource,
    CsvSource,
    ParquetSource,
    check_path,
    first_bad,
    memory_pool,
    release_memory,
    unreadable,
)
from protocols.errors import DatasetError
from protocols.objectives import LabelSummary, summarize_labels

__all__ = [
    "CATEGORICAL",
    "CSV_BLOCK_SIZE",
    "FEATURE",
    "ID",
    "KINDS",
    "LABEL",
    "MAX_ROWS",
    "NUMERIC",
    "PARQUET_BATCH_ROWS",
    "PreparedTable",
    "TableScan",
    "load_schema",
    "memory_pool",
    "read_table",
    "release_memory",
    "to_ipc",
]

MAX_ROWS = 50_000_000


# --------------------------------------------------------------------------- the scan


@dataclass
class _LabelWitness:
    """What a label summary depends on, kept across batches: the smallest and the largest
    label, and one that is not a whole number if there is one. Their summary is the
    summary of every label (:func:`protocols.objectives.summarize_labels` reads only the
    range and whether all labels are whole numbers)."""

    values: list[float] = field(default_factory=list)
    fraction: float | None = None

    def add(self, labels: Any) -> None:
        import numpy as np

        if labels.size == 0:
            return
        low, high = float(labels.min()), float(labels.max())
        self.values = [min([low, *self.values]), max([high, *self.values])]
        if self.fraction is None:
            whole = np.equal(np.floor(labels), labels)
            if not whole.all():
                self.fraction = float(labels[int(np.argmin(whole))])

    def summary(self, column: str, where: str) -> LabelSummary:
        import numpy as np

        values = self.values + ([self.fraction] if self.fraction is not None else [])
        return summarize_labels(column, np.array(values, dtype=np.float64), where)


@dataclass
class _Problem:
    """Values of a column refused at the end of the scan: how many, and the first row."""

    count: int = 0
    first_row: int = 0


class TableScan:
    """One pass over a CSV or Parquet file: its normalised schema at once, then its
    validated, normalised batches (:meth:`batches`), then the label summary.

    Problems that concern values (infinite numbers, missing labels, repeated
    ids) are counted to the end of the file and raised there; once one is
    found no further batch is yielded. A value that is not of its column's
    kind stops the scan at once.

    ``table`` (a :class:`pyarrow.Table`) is scanned instead of a file by the
    rules for Parquet; ``path`` then only names it in messages.
    """

    def __init__(
        self,
        path: Path,
        label: str | None,
        id_column: str | None,
        kinds: dict[str, str] | None = None,
        block_size: int = CSV_BLOCK_SIZE,
        batch_rows: int | None = None,
        table: Any = None,
    ) -> None:
        import pyarrow as pa

        path = Path(path)
        self.path, self.label, self.id_column = path, label, id_column
        if table is not None:
            self._source: CsvSource | ParquetSource | ArrowSource = ArrowSource(
                table, batch_rows or PARQUET_BATCH_ROWS
            )
            csv = False
        else:
            check_path(path)
            csv = path.suffix.lower() not in PARQUET_SUFFIXES
            self._source = CsvSource(path, block_size) if csv else ParquetSource(path, batch_rows)
        self._plan = plan_columns(path, self._source.fields(), label, id_column, kinds or {}, csv)
        release_memory()  # the header's reader is gone
        self.schema = pa.schema([pa.field(c.name, c.sent_as) for c in self._plan])
        self.rows = 0
        self._witness = _LabelWitness()
        self._infinite: dict[str, _Problem] = {}
        self._bad_labels = _Problem()
        self._ids: list[Any] = []
        self._done = False

    @property
    def columns(self) -> dict[str, str]:
        """Each column's kind (``numeric``, ``categorical``, or ``id``), in file order."""
        return {c.name: c.kind or ID for c in self._plan}

    def batches(self) -> Iterator[Any]:
        """The file's record batches, checked and normalised to :attr:`schema`."""
        if self._done:
            raise ValueError("a table is scanned once")
        self._done = True
        for raw in self._source.batches(self._plan):
            if raw.num_rows == 0:
                continue
            batch = self._normalise(raw)
            self.rows += raw.num_rows
            if self.rows > MAX_ROWS:
                raise DatasetError(f"{self.path} has more than {MAX_ROWS} rows")
            if not self._problems_found():
                yield batch
        self._finish()

    @property
    def label_summary(self) -> LabelSummary | None:
        """The label's summary, once :meth:`batches` ran to its end (None without a label)."""
        if self.label is None:
            return None
        return self._witness.summary(self.label, str(self.path))

    def _problems_found(self) -> bool:
        return bool(self._infinite or self._bad_labels.count)

    def _normalise(self, raw: Any) -> Any:
        import pyarrow as pa

        columns = []
        for column in self._plan:
            values = raw.column(column.name)
            if pa.types.is_dictionary(values.type):
                values = values.cast(values.type.value_type, memory_pool=memory_pool())
            if column.role == ID:
                values = self._cast(values, column)
                self._ids.append(values)
            elif column.kind == CATEGORICAL:
                values = self._cast(values, column)
            else:
                # Unsafe: large integers round to the nearest float32, as the enclave would.
                values = self._cast(values, column, safe=False)
                self._check_numbers(column, values)
            columns.append(values)
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)

    def _cast(self, values: Any, column: Column, safe: bool = True) -> Any:
        import pyarrow as pa

        if values.type.equals(column.sent_as):
            return values
        try:
            return values.cast(column.sent_as, safe=safe, memory_pool=memory_pool())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            row = first_bad(values, column.sent_as)
            if row is None or pa.types.is_string(column.sent_as):
                raise DatasetError(
                    f"{self.path}: column {column.name!r} of type {values.type} cannot be read "
                    f"as {column.kind or column.sent_as}; declare another kind in --schema"
                ) from None
            raise unreadable(self.path, column, self.rows + row, values[row].as_py()) from None

    def _check_numbers(self, column: Column, values: Any) -> None:
        import numpy as np

        array = values.to_numpy(zero_copy_only=False)
        if column.role == LABEL:
            finite = np.isfinite(array)  # a missing label is NaN here
            bad = np.flatnonzero(~finite)
            self._witness.add(array[finite] if bad.size else array)
            problem = self._bad_labels
        else:
            bad = np.flatnonzero(np.isinf(array))
            problem = self._infinite.get(column.name, _Problem())
            if bad.size:
                self._infinite[column.name] = problem
        if bad.size:
            if not problem.count:
                problem.first_row = self.rows + int(bad[0]) + 1
            problem.count += int(bad.size)

    def _finish(self) -> None:
        """The checks that need the whole file, in column order."""
        if self.rows == 0:
            raise DatasetError(f"{self.path} has no rows")
        for column in self._plan:
            if column.role == ID:
                _check_unique_ids(self.path, column.name, self._ids)
            problem = self._infinite.get(column.name)
            if problem:
                raise DatasetError(
                    f"{self.path}: column {column.name!r} has {problem.count} infinite values "
                    f"(first at row {problem.first_row}); XGBoost needs finite numbers: replace "
                    "them with a number or leave the cell empty (missing)"
                )
        if self._bad_labels.count:
            raise DatasetError(
                f"{self.path}: label column {self.label!r} has {self._bad_labels.count} missing, "
                f"infinite or NaN values (first at row {self._bad_labels.first_row}); every row "
                "needs a finite label"
            )


def _check_unique_ids(path: Path, name: str, chunks: list[Any]) -> None:
    """Refuse missing or repeated ids, naming an example and its rows.

    By sorting a copy of the ids (not by counting them in a hash table): the
    smallest memory a check of every id can take, at the end of the scan.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    column = pa.chunked_array(chunks) if chunks else pa.chunked_array([], pa.null())
    if column.null_count:
        raise DatasetError(f"{path}: id column {name!r} has {column.null_count} missing ids")
    if len(column) < 2:
        return
    ordered = _sorted(column)
    same = pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1))  # a bitmap
    if not pc.any(same).as_py():
        return
    # Each repeated id starts a run of equal neighbours.
    starts = pc.and_(same.slice(1), pc.invert(same.slice(0, len(same) - 1)))
    repeated = int(pc.sum(starts).as_py() or 0) + int(same[0].as_py())
    first = ordered[pc.index(same, True).as_py()]
    rows = pc.indices_nonzero(pc.equal(column, first)).to_pylist()[:3]
    raise DatasetError(
        f"{path}: id column {name!r} has {repeated} repeated ids; for example "
        f"{str(first.as_py())[:40]!r} is on rows {', '.join(str(r + 1) for r in rows)}: "
        "each row needs its own id"
    )


def _sorted(column: Any) -> Any:
    """The ids in order, as one array (numbers sorted by numpy in place, others by Arrow)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = np.concatenate([c.to_numpy() for c in column.chunks])  # one copy
        values.sort()
        return pa.array(values)
    return column.take(pc.sort_indices(column)).combine_chunks()


# --------------------------------------------------------------------------- whole tables


@dataclass(frozen=True)
class PreparedTable:
    """A validated table ready to seal, with the summary of its label (None without one)."""

    table: Any  # pyarrow.Table
    label: LabelSummary | None


def read_table(
    path: Path,
    label: str | None,
    id_column: str | None,
    kinds: dict[str, str] | None = None,
    block_size: int = CSV_BLOCK_SIZE,
) -> PreparedTable:
    """The whole table at once (tests and small files): what :class:`TableScan` streams."""
    import pyarrow as pa

    scan = TableScan(path, label, id_column, kinds, block_size)
    table = pa.Table.from_batches(list(scan.batches()), scan.schema)
    return PreparedTable(table, scan.label_summary)


def to_ipc(table: Any) -> bytes:
    """A table as one Arrow IPC stream (the plaintext of a sealed data set)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())
