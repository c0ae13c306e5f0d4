"""What a query of a sealed model and its answer hold, once opened (protocols/SPEC.md §3.8–3.9).

Shared by the party that seals a query and opens its answer and by the enclave
that opens the query and seals the answer: the STREAM associated data of each,
the Arrow IPC encoding of both tables, and the shape of an answer under the
terms (``model.answer`` and ``model.digits``).
"""

from __future__ import annotations

from typing import Any

from protocols.documents.terms import ANSWER_CLASS
from protocols.errors import FormatError


def query_associated_data(model_id: str, query_id: str) -> bytes:
    """STREAM associated data of a query's sealed rows."""
    return f"detente/v1 query {model_id} {query_id}".encode()


def answer_associated_data(model_id: str, query_id: str) -> bytes:
    """STREAM associated data of a query's sealed answer."""
    return f"detente/v1 answer {model_id} {query_id}".encode()


def to_ipc(table: Any) -> bytes:
    """A table as the bytes of one Arrow IPC stream."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def from_ipc(data: bytes, what: str) -> Any:
    """The table of one Arrow IPC stream; FormatError (quoting nothing of it) if it is not one."""
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError):
        raise FormatError(f"{what} is not an Arrow IPC stream") from None


def answer_columns(objective: str, num_class: int | None, answer: str) -> list[str]:
    """The columns of an answer table: ``class``, ``prediction`` or ``prediction_0`` …"""
    if answer == ANSWER_CLASS:
        return ["class"]
    if objective == "multi:softprob":
        return [f"prediction_{k}" for k in range(int(num_class or 0))]
    return ["prediction"]


def shape_answer(
    raw: Any, objective: str, num_class: int | None, answer: str, digits: int | None
) -> Any:
    """The answer table for the model's raw output ``raw`` (``Booster.predict``'s array).

    Probabilities (or values) rounded to ``digits`` decimals when the terms say
    so; for class answers, the class: 1 where a binary probability is at least
    0.5, the most probable class for ``multi:softprob``, the predicted class
    for ``multi:softmax``.
    """
    import numpy as np
    import pyarrow as pa

    names = answer_columns(objective, num_class, answer)
    values = np.asarray(raw)
    if answer == ANSWER_CLASS:
        if values.ndim == 2:
            classes = np.argmax(values, axis=1)
        elif objective.startswith("binary:"):
            classes = (values >= 0.5).astype(np.int64)
        else:
            classes = values.astype(np.int64)
        return pa.table({"class": pa.array(classes.astype(np.int64))})
    if digits is not None:
        values = np.round(values.astype(np.float64), digits)
    if values.ndim == 2:
        return pa.table({n: pa.array(values[:, k]) for k, n in enumerate(names)})
    return pa.table({names[0]: pa.array(values)})
