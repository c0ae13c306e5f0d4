"""A party's table is validated before anything is sealed; errors name the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from party_client.tables import read_table, to_ipc
from protocols.errors import DatasetError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


def test_a_valid_csv_becomes_an_arrow_stream(tmp_path):
    table = read_table(write(tmp_path, "id,x,y\nA1,1.5,0\nA2,,1\n"), "y", "id")
    assert table.num_rows == 2 and table.column("x").null_count == 1
    assert to_ipc(table).startswith(b"\xff\xff\xff\xff")


def test_a_missing_label_column_is_named(tmp_path):
    with pytest.raises(DatasetError, match=r"no label column 'target'.*columns are: id, x, y"):
        read_table(write(tmp_path, "id,x,y\n1,2,0\n"), "target", "id")


def test_a_non_numeric_feature_names_column_row_and_value(tmp_path):
    path = write(tmp_path, "id,x,y\n1,2,0\n2,abc,1\n")
    with pytest.raises(DatasetError, match=r"column 'x' is not numeric: row 2 holds 'abc'"):
        read_table(path, "y", "id")


def test_a_missing_label_value_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="label column 'y' has 1 missing"):
        read_table(write(tmp_path, "id,x,y\n1,2,0\n2,3,\n"), "y", "id")


def test_an_unknown_id_column_and_a_missing_file_are_named(tmp_path):
    with pytest.raises(DatasetError, match="no id column 'key'"):
        read_table(write(tmp_path, "id,x,y\n1,2,0\n"), "y", "key")
    with pytest.raises(DatasetError, match="no such file"):
        read_table(tmp_path / "nope.csv", "y", None)


def test_a_malformed_csv_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="cannot read"):
        read_table(write(tmp_path, 'x,y\n1,0\n"2,1,5,6\n'), "y", None)
