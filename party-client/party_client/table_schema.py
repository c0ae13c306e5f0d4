"""The kinds of a party's table columns: ``--schema`` files and the column plan.

:func:`load_schema` reads a schema file (column → ``numeric`` or
``categorical``); :func:`plan_columns` checks a file's header against the
upload's options (label, id column, schema) and gives each column its role,
its kind, the type it is read as and the type it is sent as (the rules are
in :mod:`party_client.tables`, which re-exports these names).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocols.errors import DatasetError

NUMERIC = "numeric"
CATEGORICAL = "categorical"
KINDS = (NUMERIC, CATEGORICAL)
_OTHER_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}

FEATURE, LABEL, ID = "feature", "label", "id"


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
class Column:
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


def plan_columns(
    path: Path,
    fields: list[tuple[str, Any]],
    label: str | None,
    id_column: str | None,
    kinds: dict[str, str],
    csv: bool,
) -> list[Column]:
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
            plan.append(Column(name, role, kind, declared, read_as, pa.float32()))
        else:
            plan.append(Column(name, role, kind, declared, pa.string(), pa.string()))
    return plan


def _id_plan(name: str, inferred: Any, declared: str | None, csv: bool) -> Column:
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
    return Column(name, ID, None, declared is not None, kind, kind)


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
