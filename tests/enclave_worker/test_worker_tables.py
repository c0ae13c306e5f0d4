"""The table steps of a job alone: library errors leave the enclave without their text."""

from __future__ import annotations

import pyarrow as pa
import pytest

from enclave_worker import jobs
from protocols.errors import ConsentError, DatasetError

CANARY = "canary-4242"


def test_library_errors_keep_their_kind_and_lose_their_text() -> None:
    with pytest.raises(DatasetError) as caught:
        with jobs.value_free_errors("converting column 'f1' to numbers"):
            raise ValueError(f"could not convert string to float: '{CANARY}'")
    message = str(caught.value)
    assert CANARY not in message and caught.value.__cause__ is None
    assert "converting column 'f1' to numbers failed (ValueError)" in message
    # Detente's own errors never quote values: they pass unchanged, as does MemoryError.
    own = ConsentError("data set 'a' was sealed to another enclave key")
    with pytest.raises(ConsentError) as passed:
        with jobs.value_free_errors("anything"):
            raise own
    assert passed.value is own
    with pytest.raises(MemoryError):
        with jobs.value_free_errors("anything"):
            raise MemoryError


def test_feature_matrix_names_the_column_not_the_value() -> None:
    table = pa.table({"f1": pa.array([CANARY], pa.string()), "label": [1]})
    with pytest.raises(DatasetError) as caught:
        jobs.feature_matrix(table, "label", None)
    assert "column 'f1'" in str(caught.value) and CANARY not in str(caught.value)
