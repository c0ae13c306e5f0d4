"""detente.evaluation against scikit-learn, which the demo no longer needs at run time."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from detente.evaluation import roc_auc, stratified_split


@pytest.mark.parametrize(
    ("rows", "weights", "test_fraction", "seed"),
    [
        (30_000, [0.78, 0.22], 0.2, 0),  # the demo's shape
        (101, [0.5, 0.5], 0.2, 1),
        (57, [0.6, 0.3, 0.1], 0.25, 7),
        (40, [0.25, 0.25, 0.25, 0.25], 0.3, 42),  # equal remainders: random tie breaks
        (13, [0.5, 0.5], 0.5, 3),
        (999, [0.9, 0.1], 0.1, 123),
    ],
)
def test_stratified_split_equals_train_test_split(
    rows: int, weights: list[float], test_fraction: float, seed: int
) -> None:
    labels = np.random.default_rng(seed).choice(len(weights), size=rows, p=weights)
    train, test = stratified_split(labels, test_fraction, seed)
    want_train, want_test = train_test_split(
        np.arange(rows), test_size=test_fraction, random_state=seed, stratify=labels
    )
    np.testing.assert_array_equal(train, want_train)
    np.testing.assert_array_equal(test, want_test)


def test_stratified_split_holds_out_each_class_in_proportion() -> None:
    labels = np.array([0] * 80 + [1] * 20)
    train, test = stratified_split(labels, 0.2, 0)
    assert sorted([*train, *test]) == list(range(100))
    assert (labels[test] == 1).sum() == 4 and len(test) == 20


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([0, 0, 0, 1], "one row only"),
        ([0, 0, 1, 1, 2, 2], "cannot give each of 3 label values"),
    ],
)
def test_stratified_split_refuses_classes_it_cannot_split(labels: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stratified_split(np.array(labels), 0.2, 0)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("distinct", [2, 5, 50, None])  # None: continuous scores, no ties
def test_roc_auc_equals_roc_auc_score(seed: int, distinct: int | None) -> None:
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(10, 3000))
    labels = rng.integers(0, 2, size=rows)
    labels[:2] = [0, 1]  # both classes present
    scores = rng.normal(size=rows) + 0.7 * labels
    if distinct is not None:  # many ties, within and across the classes
        scores = np.round(scores * distinct / 6) / distinct
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_auc_of_float32_predictions_and_labels() -> None:
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 2, size=5000).astype(np.float32)
    scores = rng.random(5000).astype(np.float32)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_auc_extremes_and_ties() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "only one is present"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "0 or 1"),
        ([0, 1], [0.1, 0.2, 0.3], "2 labels but 3 scores"),
    ],
)
def test_roc_auc_refuses_what_has_no_auc(labels: list[int], scores: list[float], message: str):
    with pytest.raises(ValueError, match=message):
        roc_auc(labels, scores)
