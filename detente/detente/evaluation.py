"""Held-out evaluation for the demo in numpy: a seeded stratified split and ROC AUC.

Both equal their scikit-learn counterparts (``train_test_split(..., stratify=y)``
and ``roc_auc_score``), which the tests check, so the demo prints the figures
it always printed without making scikit-learn a dependency of Detente.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["roc_auc", "stratified_split"]


def _approximate_mode(counts: Any, draws: int, rng: np.random.RandomState) -> Any:
    """How many of ``draws`` to take from each class: proportional, floored, then topped up.

    The remaining draws go to the classes with the largest remainders; among equal
    remainders the classes are chosen at random (scikit-learn's ``_approximate_mode``).
    """
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    missing = int(draws - floored.sum())
    if missing > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            take = min(len(tied), missing)
            floored[rng.choice(tied, size=take, replace=False)] += 1
            missing -= take
            if missing == 0:
                break
    return floored.astype(int)


def stratified_split(labels: Any, test_fraction: float, seed: int) -> tuple[Any, Any]:
    """Row indices (train, test) holding out ``test_fraction`` of the rows of each class.

    The same indices, in the same order, as scikit-learn's
    ``train_test_split(np.arange(n), test_size=test_fraction, random_state=seed,
    stratify=labels)``: the legacy ``RandomState`` stream is consumed in the same
    order (ties of the class split, one permutation per class, then train and test).
    Raises ValueError when a class has fewer than two rows or a side would get
    fewer rows than there are classes.
    """
    y = np.asarray(labels)
    rows = y.shape[0]
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be between 0 and 1, not {test_fraction}")
    n_test = math.ceil(test_fraction * rows)
    n_train = rows - n_test
    classes, class_of_row, counts = np.unique(y, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        few = classes[counts < 2].tolist()
        raise ValueError(f"label values {few} have one row only; each needs at least two")
    if n_train < len(classes) or n_test < len(classes):
        raise ValueError(
            f"{rows} rows cannot give each of {len(classes)} label values a row on both sides"
        )
    by_class = np.split(np.argsort(class_of_row, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    train_per_class = _approximate_mode(counts, n_train, rng)
    test_per_class = _approximate_mode(counts - train_per_class, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for members, n_tr, n_te in zip(by_class, train_per_class, test_per_class, strict=True):
        shuffled = members.take(rng.permutation(len(members)), mode="clip")
        train.extend(shuffled[:n_tr])
        test.extend(shuffled[n_tr : n_tr + n_te])
    return rng.permutation(train), rng.permutation(test)


def roc_auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve of ``scores`` for 0/1 ``labels``; ties count one half.

    Computed from ranks (the Mann-Whitney U statistic): with tied scores given
    their average rank, AUC = (sum of the positives' ranks − P(P+1)/2) / (P·N),
    the area scikit-learn's ``roc_auc_score`` integrates.
    """
    y = np.asarray(labels).ravel()
    score = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != score.shape:
        raise ValueError(f"{y.shape[0]} labels but {score.shape[0]} scores")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    positive = y == 1
    n_pos = int(positive.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both labels among the rows; only one is present")
    _, group_of, group_sizes = np.unique(score, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(group_sizes)  # 1-based rank of each group's last member
    average_rank = last_rank - (group_sizes - 1) / 2.0
    ranks = average_rank[group_of.ravel()]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
