"""From ciphertext to XGBoost's matrix: open, check and join the data sets, without leaking values.

Errors leave the enclave (as the job's error, in events and in the host's
logs), so every error raised here names the data set, the column and the kind
of problem, never a value; exceptions of numpy, Arrow and XGBoost, whose texts
may quote values, are turned into such errors at each stage
(:func:`value_free_errors`) and their text is dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator
from typing import Any

from enclave_worker.identity import EnclaveIdentity
from enclave_worker.jobs.consent import AcceptedJob
from protocols import hpke, stream
from protocols.documents import DatasetManifest, JobTerms, schema_columns, schema_sha256
from protocols.errors import ConsentError, DatasetError, DetenteError, FormatError, IntegrityError
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


def _open_dataset(identity: EnclaveIdentity, manifest: DatasetManifest, blob: bytes) -> Any:
    """Check ``blob`` against its signed manifest, decrypt it, and read its Arrow table."""
    import pyarrow as pa

    if len(blob) != manifest.ciphertext_size:
        raise IntegrityError(
            f"data set {manifest.dataset_id!r} is {len(blob)} bytes, its manifest says "
            f"{manifest.ciphertext_size}: it was truncated or extended"
        )
    if hashlib.sha256(blob).hexdigest() != manifest.ciphertext_sha256:
        raise IntegrityError(
            f"data set {manifest.dataset_id!r} does not match the digest in its signed manifest"
        )
    # The manifest names which of the enclave's keys (X25519 or post-quantum) it used.
    own = manifest.sealed_to_hpke_key
    private = identity.hpke_private_key_for(own)
    if private is None:
        raise ConsentError(f"data set {manifest.dataset_id!r} was sealed to another enclave key")
    key = hpke.unwrap_key(
        manifest.wrapped_key, private, hpke.data_key_info(manifest.dataset_id, own)
    )
    plaintext = stream.open_stream(key, blob, manifest.dataset_id.encode())
    try:
        table = pa.ipc.open_stream(io.BytesIO(plaintext)).read_all()
    except (pa.ArrowException, ValueError, OSError):
        # Arrow's text may quote bytes of the data: only the kind of problem leaves.
        raise FormatError(
            f"data set {manifest.dataset_id!r} is not a readable Arrow IPC stream"
        ) from None
    columns = schema_columns(table.schema)
    if schema_sha256(columns) != manifest.schema_sha256:
        raise IntegrityError(f"data set {manifest.dataset_id!r} schema differs from its manifest")
    if table.num_rows != manifest.row_count:
        raise IntegrityError(
            f"data set {manifest.dataset_id!r} row count differs from its manifest"
        )
    return table


def _is_numeric(kind: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
    )


def check_table(dataset_id: str, table: Any, terms: JobTerms) -> None:
    """Check one data set before any join: label present and fit for the objective,
    every feature numeric and finite. Errors name the data set and column."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    where = f"data set {dataset_id!r}"
    if terms.label not in table.column_names:
        raise DatasetError(f"{where} has no label column {terms.label!r}")
    for name in table.column_names:
        if name == terms.id_column:
            continue
        kind = table.schema.field(name).type
        if not _is_numeric(kind):
            hint = (
                "if it identifies rows, propose the job with --id naming it"
                if name != terms.label
                else "labels must be numbers"
            )
            raise DatasetError(f"{where} column {name!r} holds {kind} values, not numbers: {hint}")
        if name != terms.label and pa.types.is_floating(kind):
            with value_free_errors(f"checking {where} column {name!r}"):
                infinite = int(pc.sum(pc.is_inf(table.column(name))).as_py() or 0)
            if infinite:
                raise DatasetError(
                    f"{where} column {name!r} has {infinite} infinite values; XGBoost needs "
                    "finite numbers or missing values"
                )
    column = table.column(terms.label)
    if column.null_count:
        raise DatasetError(
            f"{where} label column {terms.label!r} has {column.null_count} missing values"
        )
    with value_free_errors(f"reading {where} label column {terms.label!r}"):
        labels = column.to_numpy(zero_copy_only=False).astype(np.float64)
    check_labels(terms.objective, summarize_labels(terms.label, labels, where), terms.params, where)


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
        if not mine.type.equals(theirs.type):
            return (
                f"has column {theirs.name!r} of type {theirs.type}, the first data set {mine.type}"
            )
    return "differs in column metadata"


def _join(tables: list[Any], terms: JobTerms) -> Any:
    """Horizontal join: the union of rows, in terms order, of tables with equal schemas.

    The id column identifies rows but is no feature, so its type may differ
    between parties; it is dropped before the schemas are compared.
    """
    import pyarrow as pa

    id_column = terms.id_column
    tables = [t.drop_columns([id_column]) if id_column in t.column_names else t for t in tables]
    first = tables[0].schema
    for (dataset_id, _), table in zip(terms.datasets, tables, strict=True):
        if not table.schema.equals(first):
            raise DatasetError(
                f"horizontal join needs equal schemas; data set {dataset_id!r} "
                f"{_first_difference(first, table.schema)} (first data set "
                f"{terms.datasets[0][0]!r})"
            )
    with value_free_errors("joining the data sets"):
        return pa.concat_tables(tables)


def joined_table(identity: EnclaveIdentity, job: AcceptedJob) -> Any:
    """Open and check every received data set of ``job`` in terms order, then join them.

    Each ciphertext is dropped from the job as soon as it is opened, to keep
    the peak memory down.
    """
    tables = []
    for dataset_id, _ in job.terms.datasets:
        blob = bytes(job.received.pop(dataset_id, b""))
        table = _open_dataset(identity, job.manifests[dataset_id], blob)
        del blob  # the ciphertext is no longer needed: keep the peak down
        check_table(dataset_id, table, job.terms)
        tables.append(table)
    return _join(tables, job.terms)


def feature_matrix(table: Any, label: str, id_column: str | None) -> tuple[Any, Any, list[str]]:
    """Arrow table → (float32 features, float32 labels, feature names).

    Every non-label, non-id column is a feature, in schema order; nulls are NaN
    (XGBoost's missing value). The same rule is documented for plaintext users
    so a model trained here equals one trained on the joined rows in the clear.
    """
    import numpy as np

    names = [n for n in table.column_names if n not in (label, id_column)]
    if label not in table.column_names:
        raise DatasetError(f"label column {label!r} is not in the data")
    x = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        with value_free_errors(f"converting column {name!r} to numbers"):
            x[:, j] = table.column(name).to_numpy(zero_copy_only=False).astype(np.float32)
    with value_free_errors(f"converting label column {label!r} to numbers"):
        y = table.column(label).to_numpy(zero_copy_only=False).astype(np.float32)
    return x, y, names
