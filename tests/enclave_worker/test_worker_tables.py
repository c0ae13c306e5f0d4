"""The table steps of a job alone: library errors leave the enclave without their text."""

from __future__ import annotations

import pyarrow as pa
import pytest
from worker_testkit import Owner

from enclave_worker import jobs
from protocols.documents import JobTerms
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


def _terms(join: str = "horizontal") -> JobTerms:
    owner = Owner("a")
    return JobTerms(
        job_id="job-t",
        datasets=[("a", "00" * 32), ("b", "11" * 32)],
        join=join,
        objective="binary:logistic",
        label="label",
        params={},
        num_rounds=1,
        seed=0,
        allowed_mrenclaves=["ab" * 32],
        outputs=["model"],
        recipients=[owner.recipient()],
        expires_at=0,
        id_column="id",
    )


@pytest.mark.parametrize(
    ("column", "where"),
    [
        # Neither numbers nor text: refused, naming the column and its type.
        (pa.array([CANARY.encode()], pa.binary()), "column 'f1' holds binary values"),
        # Text labels: labels must be numbers.
        (None, "label column 'label' holds string values"),
    ],
)
def test_check_table_names_the_column_not_the_value(column: pa.Array | None, where: str) -> None:
    if column is None:
        table = pa.table({"id": [1], "f1": [0.5], "label": pa.array([CANARY])})
    else:
        table = pa.table({"id": [1], "f1": column, "label": [1]})
    with pytest.raises(DatasetError) as caught:
        jobs.check_table("a", table, _terms())
    assert where in str(caught.value) and "data set 'a'" in str(caught.value)
    assert CANARY not in str(caught.value)


def test_text_columns_are_features_and_only_the_label_holder_needs_the_label() -> None:
    text = pa.table({"id": [1, 2], "city": pa.array([CANARY, "b"]), "label": [0, 1]})
    jobs.check_table("a", text, _terms())  # text: a categorical feature
    unlabelled = pa.table({"id": [1, 2], "x": [1.0, 2.0]})
    jobs.check_table("b", unlabelled, _terms("vertical"))
    with pytest.raises(DatasetError, match="data set 'b' has no label column 'label'"):
        jobs.check_table("b", unlabelled, _terms("horizontal"))


def test_a_text_column_with_a_value_per_row_is_refused_as_an_id() -> None:
    ids = [f"{CANARY}-{n}" for n in range(jobs.tables.ID_LIKE_ROWS)]
    table = pa.table({"key": ids, "x": [1.0] * len(ids), "label": [0, 1] * (len(ids) // 2)})
    with pytest.raises(DatasetError) as caught:
        jobs.check_table("a", table, _terms())
    message = str(caught.value)
    assert "data set 'a' column 'key' holds text with a different value in every row" in message
    assert CANARY not in message
    repeated = table.set_column(0, "key", pa.array(ids[:-1] + ids[:1]))
    jobs.check_table("a", repeated, _terms())  # a repeated value: a category like any other
