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
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocols.errors import DatasetError
from protocols.objectives import LabelSummary, summarize_labels

MAX_ROWS = 50_000_000
NUMERIC = "numeric"
CATEGORICAL = "categorical"
KINDS = (NUMERIC, CATEGORICAL)
# About this many bytes of CSV (or rows of Parquet) per record batch: large
# enough that per-batch costs vanish, small enough to bound the party's memory.
CSV_BLOCK_SIZE = 512 << 10
PARQUET_BATCH_ROWS = 1 << 14
# Parquet batches hold about this many bytes when rows are narrow (at least
# PARQUET_BATCH_ROWS rows): fewer, larger batches halve the cost of a narrow
# table's scan (measured on 262 MiB of float32 columns: 1.5 s → 1.0 s).
PARQUET_BATCH_BYTES = 8 << 20
PARQUET_MAX_BATCH_ROWS = 1 << 17
PARQUET_BUFFER = 1 << 16
_OTHER_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}
_PARQUET_SUFFIXES = {".parquet", ".pq"}

FEATURE, LABEL, ID = "feature", "label", "id"


# --------------------------------------------------------------------------- memory


def memory_pool() -> Any:
    """The Arrow allocator a scan reads and converts with: jemalloc where pyarrow has it, as
    it gives freed memory back sooner than the default mimalloc (measured on a 380 MB CSV:
    peak 77 against 103 MiB of private memory for the scan), else the default."""
    import pyarrow as pa

    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:
        return pa.default_memory_pool()


def release_memory() -> None:
    """Return what the scan's allocator keeps for reuse (when the scan's data is gone)."""
    memory_pool().release_unused()


# --------------------------------------------------------------------------- schema files


def load_schema(path: Path) -> dict[str, str]:
    """A ``--schema`` file: a TOML or JSON table mapping column names to a kind.

    For example ``region = "categorical"`` and ``"branch code" = "categorical"``
    (TOML), or ``{"branch code": "categorical"}`` (JSON, chosen by the ``.json``
    suffix). Kinds are ``numeric`` and ``categorical``.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read the schema file {path}: {exc}") from None
    try:
        doc = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise DatasetError(f"the schema file {path} is not valid {kind}: {exc}") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"the schema file {path} must map column names to a kind")
    kinds: dict[str, str] = {}
    for name, kind in doc.items():
        if kind not in KINDS:
            raise DatasetError(
                f"the schema file {path} gives column {name!r} the kind {kind!r}; "
                f"kinds are {' and '.join(KINDS)}"
            )
        kinds[name] = kind
    return kinds


# --------------------------------------------------------------------------- the column plan


@dataclass(frozen=True)
class _Column:
    """One column of the file: its role, its kind, how it is read and how it is sent."""

    name: str
    role: str  # FEATURE, LABEL or ID
    kind: str | None  # NUMERIC or CATEGORICAL; None for the id column (it keeps its type)
    declared: bool  # the kind comes from the schema file
    read_as: Any  # pyarrow type the CSV reader parses the column as (CSV only)
    sent_as: Any  # pyarrow type in the sealed stream


def _is_numeric(kind: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_null(kind)
    )


def _is_text(kind: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _plan(
    path: Path,
    fields: list[tuple[str, Any]],
    label: str | None,
    id_column: str | None,
    kinds: dict[str, str],
    csv: bool,
) -> list[_Column]:
    """Each column's role, kind and types, checking the header against the options."""
    import pyarrow as pa

    names = [name for name, _ in fields]
    if csv:
        _check_delimiter(path, names)
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise DatasetError(f"{path} has duplicate column names: {', '.join(map(repr, repeated))}")
    if label is not None and label not in names:
        raise DatasetError(
            f"{path} has no label column {label!r}; its columns are: {', '.join(names)}"
        )
    if id_column is not None and id_column not in names:
        raise DatasetError(
            f"{path} has no id column {id_column!r}; its columns are: {', '.join(names)}"
        )
    if label is not None and id_column == label:
        raise DatasetError(f"{path}: the label column cannot also be the id column")
    unknown = [n for n in kinds if n not in names]
    if unknown:
        raise DatasetError(
            f"the schema file names columns {path} does not have: {', '.join(map(repr, unknown))}"
            f"; its columns are: {', '.join(names)}"
        )
    if label is not None and kinds.get(label) == CATEGORICAL:
        raise DatasetError(
            f"the schema file declares the label column {label!r} categorical; a label is "
            "numeric (class numbers 0, 1, 2, … or amounts)"
        )
    plan = []
    for name, inferred in fields:
        declared = name in kinds
        if name == id_column:
            plan.append(_id_plan(name, inferred, kinds.get(name), csv))
            continue
        role = LABEL if name == label else FEATURE
        if declared:
            kind = kinds[name]
        elif _is_numeric(inferred):
            kind = NUMERIC
        elif csv or _is_text(inferred):
            kind = CATEGORICAL  # CSV text, even if Arrow read it as a date or as bytes
        else:
            raise DatasetError(
                f"{path}: column {name!r} has type {inferred}, which is neither numeric nor "
                "text; declare it categorical with --schema, or drop it"
            )
        if role == LABEL:
            kind = NUMERIC
        if kind == NUMERIC:
            read_as = pa.bool_() if pa.types.is_boolean(inferred) else pa.float64()
            plan.append(_Column(name, role, kind, declared, read_as, pa.float32()))
        else:
            plan.append(_Column(name, role, kind, declared, pa.string(), pa.string()))
    return plan


def _id_plan(name: str, inferred: Any, declared: str | None, csv: bool) -> _Column:
    """The id column keeps its type; declared categorical it is read as text (leading zeros
    and all), declared numeric as a number."""
    import pyarrow as pa

    if pa.types.is_dictionary(inferred):
        inferred = inferred.value_type
    if declared == CATEGORICAL or (pa.types.is_null(inferred) and csv):
        kind = pa.string()
    elif declared == NUMERIC and not _is_numeric(inferred):
        kind = pa.float64()
    elif pa.types.is_large_string(inferred) or (csv and not _is_numeric(inferred)):
        kind = pa.string()
    else:
        kind = inferred
    return _Column(name, ID, None, declared is not None, kind, kind)


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


# --------------------------------------------------------------------------- sources


def _check_path(path: Path) -> None:
    if not path.exists():
        raise DatasetError(f"no such file: {path}")
    if path.is_dir():
        raise DatasetError(f"{path} is a folder: name a CSV or Parquet file")


def _not_utf8(path: Path) -> DatasetError:
    return DatasetError(
        f"{path} is not UTF-8 text (its header has bytes that are not UTF-8): save it "
        "as UTF-8 CSV and upload again"
    )


def _csv_options(
    block_size: int, types: dict[str, Any] | None = None, use_threads: bool = True
) -> dict[str, Any]:
    import pyarrow.csv as pacsv

    return {
        "memory_pool": memory_pool(),
        "read_options": pacsv.ReadOptions(block_size=block_size, use_threads=use_threads),
        # An empty cell is missing, in text columns too (a missing category).
        "convert_options": pacsv.ConvertOptions(column_types=types, strings_can_be_null=True),
    }


class _CsvSource:
    """A CSV file read twice: the first block for the header and the inferred types, then
    every block with the types of the plan."""

    kind = "CSV"

    def __init__(self, path: Path, block_size: int) -> None:
        self.path, self.block_size = path, block_size

    def fields(self) -> list[tuple[str, Any]]:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        try:
            # One thread: the reader reads no further than the block it infers types from.
            options = _csv_options(self.block_size, use_threads=False)
            with pacsv.open_csv(self.path, **options) as reader:
                return [(f.name, f.type) for f in reader.schema]
        except UnicodeDecodeError:
            raise _not_utf8(self.path) from None
        except (pa.ArrowException, OSError) as exc:
            raise DatasetError(f"cannot read {self.path} as CSV: {exc}") from None

    def batches(self, plan: list[_Column]) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        types = {c.name: c.read_as for c in plan}
        try:
            reader = pacsv.open_csv(self.path, **_csv_options(self.block_size, types))
        except (pa.ArrowException, OSError) as exc:
            raise self._failure(exc, plan) from None
        with reader:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                except (pa.ArrowException, OSError) as exc:
                    raise self._failure(exc, plan) from None
                yield batch

    def _failure(self, exc: Exception, plan: list[_Column]) -> DatasetError:
        """Why the reader stopped: a value that does not parse as its column's type (found
        again, with its row), or a malformed file."""
        if "conversion error" in str(exc) or "UTF8" in str(exc):
            found = _find_unreadable(self.path, self.block_size, plan)
            if found is not None:
                return found
        return DatasetError(f"cannot read {self.path} as CSV: {exc}")


def _find_unreadable(path: Path, block_size: int, plan: list[_Column]) -> DatasetError | None:
    """Read the file again, every column as bytes, to name the first value that does not
    parse as its column's type (an error path: speed does not matter)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    raw = {c.name: pa.binary() for c in plan}
    offset = 0
    try:
        with pacsv.open_csv(path, **_csv_options(block_size, raw)) as reader:
            for batch in reader:
                for column in plan:
                    values = batch.column(column.name)
                    row = _first_bad(values, column.read_as)
                    if row is not None:
                        return _unreadable(path, column, offset + row, values[row].as_py())
                offset += batch.num_rows
    except (pa.ArrowException, OSError):
        return None
    return None


def _first_bad(values: Any, kind: Any) -> int | None:
    """The first index of ``values`` (bytes) that does not cast to ``kind``, or None."""
    if _casts(values, kind):
        return None
    low, high = 0, len(values)  # the bad value is in [low, high)
    while high - low > 1:
        middle = (low + high) // 2
        if _casts(values.slice(low, middle - low), kind):
            low = middle
        else:
            high = middle
    return low


def _casts(values: Any, kind: Any) -> bool:
    import pyarrow as pa

    try:
        text = values.cast(pa.string()) if pa.types.is_binary(values.type) else values
        text.cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _unreadable(path: Path, column: _Column, row: int, value: Any) -> DatasetError:
    """The message for a value of ``column`` that is not of its kind, at 0-based ``row``."""
    import pyarrow as pa

    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return DatasetError(
                f"{path}: column {column.name!r} is not UTF-8 text: row {row + 1} holds bytes "
                "that are not UTF-8; save the file as UTF-8 and upload again"
            )
    shown = str(value)[:40]
    if column.role == ID:
        return DatasetError(
            f"{path}: id column {column.name!r} was read as {column.read_as} from its first "
            f"rows, but row {row + 1} holds {shown!r}; declare it categorical in --schema to "
            "read the ids as text"
        )
    what = "label column" if column.role == LABEL else "column"
    if column.role == LABEL:
        why = "a label is a number (class numbers 0, 1, 2, … or amounts)"
    elif column.declared:
        why = "the schema file declares it numeric: fix the value, or declare it categorical"
    elif pa.types.is_boolean(column.read_as):
        why = "its first rows are true/false: fix the value, or declare it categorical in --schema"
    else:
        why = (
            "its first rows are numbers, so it is read as numeric: fix the value, declare it "
            "categorical in --schema, or name it with --id if it is an identifier"
        )
    return DatasetError(
        f"{path}: {what} {column.name!r} is not numeric: row {row + 1} holds {shown!r}; {why}"
    )


class _ParquetSource:
    kind = "Parquet"

    def __init__(self, path: Path, batch_rows: int | None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        try:
            # Column chunks read through a buffer rather than whole: memory per column, not
            # per row group (which may hold every row).
            self._file = pq.ParquetFile(
                path, buffer_size=PARQUET_BUFFER, pre_buffer=False, memory_map=False
            )
        except (pa.ArrowException, OSError) as exc:
            raise DatasetError(f"cannot read {path} as Parquet: {exc}") from None
        self.batch_rows = batch_rows or _batch_rows([t for _, t in self.fields()])

    def fields(self) -> list[tuple[str, Any]]:
        return [(f.name, f.type) for f in self._file.schema_arrow]

    def batches(self, plan: list[_Column]) -> Iterator[Any]:
        import pyarrow as pa

        try:
            yield from self._file.iter_batches(batch_size=self.batch_rows, use_threads=False)
        except (pa.ArrowException, OSError) as exc:
            raise DatasetError(f"cannot read {self.path} as Parquet: {exc}") from None


def _batch_rows(types: list[Any]) -> int:
    """Rows of about PARQUET_BATCH_BYTES, by the columns' widths (text counted as 32 bytes)."""
    width = 0
    for kind in types:
        try:
            width += max(1, kind.bit_width // 8)
        except ValueError:  # variable width: text, binary, nested
            width += 32
    rows = PARQUET_BATCH_BYTES // max(width, 1)
    return int(min(PARQUET_MAX_BATCH_ROWS, max(PARQUET_BATCH_ROWS, rows)))


class _ArrowSource:
    """A table already in memory (a Python caller's), read as the files are."""

    kind = "Arrow"

    def __init__(self, table: Any, batch_rows: int) -> None:
        self.table, self.batch_rows = table, batch_rows

    def fields(self) -> list[tuple[str, Any]]:
        return [(f.name, f.type) for f in self.table.schema]

    def batches(self, plan: list[_Column]) -> Iterator[Any]:
        yield from self.table.to_batches(max_chunksize=self.batch_rows)


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
            self._source: _CsvSource | _ParquetSource | _ArrowSource = _ArrowSource(
                table, batch_rows or PARQUET_BATCH_ROWS
            )
            csv = False
        else:
            _check_path(path)
            csv = path.suffix.lower() not in _PARQUET_SUFFIXES
            self._source = _CsvSource(path, block_size) if csv else _ParquetSource(path, batch_rows)
        self._plan = _plan(path, self._source.fields(), label, id_column, kinds or {}, csv)
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

    def _cast(self, values: Any, column: _Column, safe: bool = True) -> Any:
        import pyarrow as pa

        if values.type.equals(column.sent_as):
            return values
        try:
            return values.cast(column.sent_as, safe=safe, memory_pool=memory_pool())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            row = _first_bad(values, column.sent_as)
            if row is None or pa.types.is_string(column.sent_as):
                raise DatasetError(
                    f"{self.path}: column {column.name!r} of type {values.type} cannot be read "
                    f"as {column.kind or column.sent_as}; declare another kind in --schema"
                ) from None
            raise _unreadable(self.path, column, self.rows + row, values[row].as_py()) from None

    def _check_numbers(self, column: _Column, values: Any) -> None:
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
