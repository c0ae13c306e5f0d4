"""How the demo deals a table out to its parties, and which task its label makes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from detente.demo import (
    VERTICAL_GROUPS,
    DemoError,
    _task,
    _vertical_parties,
    split_columns,
)


def test_the_credit_groups_are_kept_when_the_data_has_their_columns() -> None:
    columns = [c for _, names in VERTICAL_GROUPS for c in names]
    assert split_columns(columns, 3, VERTICAL_GROUPS) == VERTICAL_GROUPS


def test_other_columns_are_dealt_out_in_turn() -> None:
    dealt = split_columns(["a", "b", "c", "d", "e"], 2, VERTICAL_GROUPS)
    assert dealt == [("", ["a", "c", "e"]), ("", ["b", "d"])]


def test_fewer_columns_than_parties_is_refused() -> None:
    with pytest.raises(DemoError, match="2 feature columns, fewer than 3 parties"):
        split_columns(["a", "b"], 3)


def test_vertical_parties_share_ids_and_only_the_last_holds_the_label() -> None:
    n = 2000
    table = pa.table(
        {
            "ID": pa.array(range(n)),
            "a": pa.array(np.arange(n, dtype=np.float64)),
            "b": pa.array(np.arange(n, dtype=np.float64)),
            "c": pa.array(np.arange(n, dtype=np.float64)),
            "y": pa.array(np.arange(n) % 2),
        }
    )
    parties = _vertical_parties(table, "y", "ID", 3, default=False)
    assert [p.table.column_names for p in parties] == [
        ["ID", "a"],
        ["ID", "b"],
        ["ID", "c", "y"],
    ]
    assert [p.has_label for p in parties] == [False, False, True]
    assert [p.about for p in parties] == ["1 column", "1 column", "1 column"]
    ids = [set(p.table.column("ID").to_pylist()) for p in parties]
    # Each party lacks a few customers (seeded), and not the same ones.
    assert all(0.9 * n < len(s) < n for s in ids)
    assert len(ids[0] & ids[1] & ids[2]) < min(len(s) for s in ids)
    again = _vertical_parties(table, "y", "ID", 3, default=False)
    assert [p.table.equals(q.table) for p, q in zip(parties, again, strict=True)] == [True] * 3


@pytest.mark.parametrize(
    ("labels", "objective", "score"),
    [
        ([0, 1, 1, 0], "binary:logistic", "AUC"),
        ([0, 1, 2, 1], "multi:softprob", "accuracy"),
        ([0.5, 1.25, 3.0, 7.5], "reg:squarederror", "RMSE"),
    ],
)
def test_the_label_decides_objective_and_score(labels: list[float], objective: str, score: str):
    task = _task(np.array(labels, dtype=np.float64))
    assert (task.objective, task.score_name) == (objective, score)
