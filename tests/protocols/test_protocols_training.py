"""The shared training rules: joins, categories, validation split (protocols.training)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import xgboost as xgb

from protocols import training
from protocols.errors import DatasetError

CANARY = "CANARY-91c2"


def named(**tables: pa.Table) -> list[tuple[str, pa.Table]]:
    return list(tables.items())


def test_a_vertical_join_keeps_the_label_holders_order_and_compares_ids_as_text():
    bank = pa.table({"id": [3, 1, 2, 4], "x": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1]})
    shop = pa.table({"cid": ["1", "2", "3", "9"], "c": ["u", "v", "u", "w"], "z": [10, 20, 30, 40]})
    joined = training.join_vertical(named(bank=bank, shop=shop), {"bank": "id", "shop": "cid"}, "y")
    assert joined.column_names == ["x", "y", "c", "z"]
    assert joined.to_pydict() == {
        "x": [1.0, 2.0, 3.0],
        "y": [0, 1, 0],
        "c": ["u", "u", "v"],
        "z": [30, 10, 20],
    }


@pytest.mark.parametrize(
    ("tables", "ids", "message"),
    [
        (
            {"a": {"id": [1], "y": [0]}, "b": {"k": [1]}},
            {"a": "id", "b": "id"},
            "'b' has no id column 'id'",
        ),
        (
            {"a": {"id": [1, 1], "y": [0, 1]}, "b": {"id": [1, 2]}},
            {"a": "id", "b": "id"},
            "'a' id column 'id' has 1 repeated ids",
        ),
        (
            {"a": {"id": [1]}, "b": {"id": [1]}},
            {"a": "id", "b": "id"},
            "no data set holds the label",
        ),
        (
            {"a": {"id": [1], "y": [0]}, "b": {"id": [1], "y": [1]}},
            {"a": "id", "b": "id"},
            "label column 'y' is in more than one data set",
        ),
        (
            {"a": {"id": [1], "y": [0], "f": [1]}, "b": {"id": [1], "f": [2]}},
            {"a": "id", "b": "id"},
            "feature column 'f' is in data sets 'a' and 'b'",
        ),
    ],
)
def test_vertical_join_errors_name_data_set_and_column(tables, ids, message):
    parts = [(name, pa.table(columns)) for name, columns in tables.items()]
    with pytest.raises(DatasetError, match=message):
        training.join_vertical(parts, ids, "y")


def test_a_small_intersection_is_refused_without_saying_its_size():
    a = pa.table({"id": [1, 2, 3], "y": [0, 1, 0]})
    b = pa.table({"id": [3, 4, 5], "f": [1.0, 2.0, 3.0]})
    with pytest.raises(DatasetError, match="fewer rows than the terms' min_rows = 2") as info:
        training.join_vertical(named(a=a, b=b), {"a": "id", "b": "id"}, "y", min_rows=2)
    assert " 1 " not in str(info.value)


def test_horizontal_join_names_the_first_differing_column_and_unifies_text():
    a = pa.table({"id": [1], "x": [1.0], "c": ["u"], "y": [0]})
    b = pa.table({"id": ["k"], "x": [2.0], "c": pa.array(["v"]).dictionary_encode(), "y": [1]})
    joined = training.join_horizontal(named(a=a, b=b), {"a": "id", "b": "id"})
    assert joined.column("c").to_pylist() == ["u", "v"]
    other = pa.table({"id": [1], "x": [1.0], "k": ["u"], "y": [0]})
    with pytest.raises(DatasetError, match="'o' has column 'k' where the first data set has 'c'"):
        training.join_horizontal(named(a=a, o=other), {"a": "id", "o": "id"})


def test_categories_are_agreed_sorted_and_unseen_ones_become_missing():
    a = pa.table({"c": ["pear", "apple", None]})
    b = pa.table({"c": ["Zebra", "apple"]})
    assert training.categories_of([a, b], "c") == ["Zebra", "apple", "pear"]
    table = training.categorize(
        pa.table({"c": ["apple", CANARY]}), {"c": ["Zebra", "apple", "pear"]}
    )
    assert table.column("c").to_pylist() == ["apple", None]
    assert table.column("c").type == pa.dictionary(pa.int32(), pa.string())


def test_a_model_trained_on_the_training_table_predicts_unseen_categories_as_missing():
    rng = np.random.default_rng(0)
    n = 2000
    c = rng.choice(["a", "b", "c"], n)
    table = pa.table({"c": c, "x": rng.normal(size=n), "y": (c == "b").astype(np.int64)})
    features, labels, names = training.training_table(table, "y")
    params = {"tree_method": "hist", "max_depth": 2, "objective": "binary:logistic", "seed": 0}
    model = xgb.train(params, xgb.DMatrix(features, label=labels, enable_categorical=True), 5)
    new = pa.table({"x": [0.0, 0.0], "c": ["b", CANARY]})
    ready = training.prediction_table(new, {"c": training.categories_of([table], "c")}, names)
    missing = training.prediction_table(
        pa.table({"x": [0.0], "c": pa.array([None], pa.string())}), {"c": ["a", "b", "c"]}, names
    )
    got = model.predict(xgb.DMatrix(ready, enable_categorical=True))
    assert got[1] == model.predict(xgb.DMatrix(missing, enable_categorical=True))[0]
    assert got[0] > 0.5 > got[1]


def test_the_validation_split_is_seeded_and_stratified():
    y = np.array([0] * 80 + [1] * 20)
    train, valid = training.validation_split(y, 0.25, seed=3, stratify=True)
    assert len(valid) == 25 and (y[valid] == 1).sum() == 5
    again = training.validation_split(y, 0.25, seed=3, stratify=True)
    assert np.array_equal(again[1], valid) and np.array_equal(again[0], train)
    assert not np.array_equal(training.validation_split(y, 0.25, seed=4, stratify=True)[1], valid)
    assert sorted(np.concatenate([train, valid])) == list(range(100))
    with pytest.raises(DatasetError, match="leaves no rows"):
        training.validation_split(np.array([0]), 0.5, 0, stratify=False)
