"""The estimators' scikit-learn surface, without a coordinator: what they refuse before any
connection is opened (the training itself is in tests/e2e/test_e2e_party_api.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from sklearn.base import clone

from party_client import Columns, SecureXGBClassifier, SecureXGBRegressor
from party_client.estimators import CrossValidationRefused, NotFitted
from protocols.errors import SetupError

NOWHERE = "/nonexistent/detente-home"  # a fit that got past its checks would fail on it


def test_get_params_and_set_params_follow_the_constructor() -> None:
    clf = SecureXGBClassifier(NOWHERE, label="y", n_estimators=7)
    assert clf.get_params()["n_estimators"] == 7 and clf.get_params()["label"] == "y"
    assert clf.set_params(max_depth=2).max_depth == 2
    assert SecureXGBRegressor()._objective == "reg:squarederror"


def test_fit_refuses_a_label_vector_and_rows_before_connecting() -> None:
    clf = SecureXGBClassifier(NOWHERE, label="y")
    with pytest.raises(SetupError, match="fit takes no y"):
        clf.fit(["a-ds"], [0, 1])
    with pytest.raises(SetupError, match="not Table"):
        clf.fit(pa.table({"x": [1.0]}))
    with pytest.raises(NotFitted, match="call fit"):
        clf.predict(pa.table({"x": [1.0]}))


def test_a_clone_made_by_scikit_learn_refuses_to_fit() -> None:
    copy = clone(SecureXGBClassifier(NOWHERE, label="y", params={"max_bin": 64}))
    assert copy.get_params()["params"] == {"max_bin": 64}
    with pytest.raises(CrossValidationRefused, match="nothing was proposed"):
        copy.fit(["a-ds", "b-ds"])


def test_columns_selects_rows_and_passes_dataset_ids() -> None:
    step = Columns(["b", "a"])
    assert step.fit_transform(["bank/loans", "claims"]) == ["bank/loans", "claims"]
    table = step.transform({"a": [1], "b": [2], "c": [3]})
    assert table.column_names == ["b", "a"]
    with pytest.raises(SetupError, match="lack the columns 'b'"):
        step.transform({"a": [1]})


def test_the_estimators_import_and_keep_their_params_without_scikit_learn() -> None:
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "from party_client.estimators import HAVE_SKLEARN, SecureXGBClassifier\n"
        "clf = SecureXGBClassifier(label='y').set_params(n_estimators=3)\n"
        "print(HAVE_SKLEARN, clf.get_params()['n_estimators'])\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "3"]
