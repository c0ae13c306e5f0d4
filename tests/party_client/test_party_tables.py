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
    prepared = read_table(write(tmp_path, "id,x,y\nA1,1.5,0\nA2,,1\n"), "y", "id")
    table = prepared.table
    assert table.num_rows == 2 and table.column("x").null_count == 1
    assert to_ipc(table).startswith(b"\xff\xff\xff\xff")
    assert prepared.label.kind == "binary" and prepared.label.classes == 2


def test_features_and_labels_are_normalised_to_float32(tmp_path):
    """An integer column at one party and a floating one at another still join."""
    import pyarrow as pa

    ints = read_table(write(tmp_path, "id,x,flag,y\nA,1,true,0\nB,2,false,1\n"), "y", "id")
    path = tmp_path / "other.csv"
    path.write_text("id,x,flag,y\n7,1.5,1,1\n8,2.5,0,0\n")
    floats = read_table(path, "y", "id")
    for prepared in (ints, floats):
        schema = prepared.table.schema
        assert [schema.field(n).type for n in ("x", "flag", "y")] == [pa.float32()] * 3
    assert ints.table.schema.field("id").type == pa.string()  # ids keep their type


def test_the_label_summary_says_what_objectives_fit(tmp_path):
    classes = read_table(write(tmp_path, "x,y\n1,0\n2,1\n3,2\n"), "y", None).label
    assert (classes.kind, classes.classes) == ("classes", 3)
    amounts = read_table(write(tmp_path, "x,y\n1,0.5\n2,-3.25\n"), "y", None).label
    assert amounts.kind == "continuous" and not amounts.non_negative


def test_infinite_values_are_refused_naming_column_and_row(tmp_path):
    with pytest.raises(DatasetError, match=r"column 'x' has 1 infinite values \(first at row 2\)"):
        read_table(write(tmp_path, "x,y\n1,0\ninf,1\n"), "y", None)
    with pytest.raises(DatasetError, match="label column 'y' has 1 missing, infinite"):
        read_table(write(tmp_path, "x,y\n1,0\n2,-inf\n"), "y", None)


def test_duplicate_ids_are_refused_naming_the_rows(tmp_path):
    path = write(tmp_path, "id,x,y\nA,1,0\nB,2,1\nA,3,0\n")
    with pytest.raises(
        DatasetError, match=r"id column 'id' has 1 repeated ids.*'A' is on rows 1, 3"
    ):
        read_table(path, "y", "id")


def test_a_header_that_is_not_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("identifiant,donn\xe9e,y\n1,2,0\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"is not UTF-8 text.*save it as UTF-8"):
        read_table(path, "y", None)


@pytest.mark.parametrize(("delimiter", "word"), [(";", "semicolon"), ("\t", "tab"), ("|", "pipe")])
def test_a_file_not_separated_by_commas_says_so(tmp_path, delimiter, word):
    path = write(tmp_path, delimiter.join(["id", "x", "y"]) + "\n" + delimiter.join("120") + "\n")
    with pytest.raises(DatasetError, match=f"looks separated by {word}s"):
        read_table(path, "y", None)


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
