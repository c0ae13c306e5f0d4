"""A party's table is validated before anything is sealed; errors name the problem."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from party_client.tables import TableScan, load_schema, read_table, to_ipc
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


def test_a_non_numeric_value_in_a_numeric_column_names_column_row_and_value(tmp_path):
    """Declared numeric (or read as numeric from the first rows): a text value is an error."""
    path = write(tmp_path, "id,x,y\n1,2,0\n2,abc,1\n")
    with pytest.raises(DatasetError, match=r"column 'x' is not numeric: row 2 holds 'abc'"):
        read_table(path, "y", "id", {"x": "numeric"})


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


# --------------------------------------------------------------------------- categorical columns


def test_text_columns_are_categorical_and_sent_as_strings(tmp_path):
    import pyarrow as pa

    path = write(tmp_path, "id,region,x,y\nA,north,1,0\nB,south,2,1\nC,,3,0\n")
    prepared = read_table(path, "y", "id")
    schema = prepared.table.schema
    assert schema.field("region").type == pa.string()
    assert schema.field("x").type == pa.float32()
    assert prepared.table.column("region").to_pylist() == ["north", "south", None]  # empty: missing
    assert TableScan(path, "y", "id").columns == {
        "id": "id",
        "region": "categorical",
        "x": "numeric",
        "y": "numeric",
    }


def test_parquet_dictionary_columns_are_categorical(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "branch": pa.array(["a", "b", "a"]).dictionary_encode(),
            "name": pa.array(["x", "y", "z"], pa.large_string()),
            "amount": pa.array([1, 2, 3], pa.int64()),
            "y": pa.array([0, 1, 0], pa.int8()),
        }
    )
    path = tmp_path / "data.parquet"
    pq.write_table(table, path)
    prepared = read_table(path, "y", None)
    assert [f.type for f in prepared.table.schema] == [
        pa.string(),
        pa.string(),
        pa.float32(),
        pa.float32(),
    ]
    assert prepared.table.column("branch").to_pylist() == ["a", "b", "a"]


def test_integer_codes_declared_categorical_become_text(tmp_path):
    """A code column (branch 101, 205…) is a category, not an amount, when the schema says so."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = write(tmp_path, "branch,x,y\n101,1.5,0\n205,2.5,1\n101,3.5,0\n")
    prepared = read_table(path, "y", None, {"branch": "categorical"})
    assert prepared.table.schema.field("branch").type == pa.string()
    assert prepared.table.column("branch").to_pylist() == ["101", "205", "101"]
    parquet = tmp_path / "codes.parquet"
    pq.write_table(pa.table({"branch": [101, 205], "y": [0, 1]}), parquet)
    column = read_table(parquet, "y", None, {"branch": "categorical"}).table.column("branch")
    assert column.to_pylist() == ["101", "205"]


def test_text_after_the_first_block_of_a_numeric_column_names_row_and_column(tmp_path):
    """Inferred numeric from the first block, a later text value stops the upload."""
    rows = "".join(f"{n},{n % 7},{n % 2}\n" for n in range(5000))
    path = write(tmp_path, "id,x,y\n" + rows + "5000,n/a-ish,1\n")
    with pytest.raises(DatasetError) as info:
        read_table(path, "y", "id", block_size=4096)
    message = str(info.value)
    assert "column 'x' is not numeric: row 5001 holds 'n/a-ish'" in message
    assert "declare it categorical in --schema" in message
    # Declared categorical, the same file uploads.
    prepared = read_table(path, "y", "id", {"x": "categorical"}, block_size=4096)
    assert prepared.table.column("x").to_pylist()[-1] == "n/a-ish"


def test_a_parquet_text_column_declared_numeric_names_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"x": ["1", "2.5", "three"], "y": [0, 1, 0]}), path)
    with pytest.raises(DatasetError, match=r"column 'x' is not numeric: row 3 holds 'three'"):
        read_table(path, "y", None, {"x": "numeric"})


def test_a_text_label_is_refused_naming_the_row(tmp_path):
    with pytest.raises(DatasetError, match=r"label column 'y' is not numeric: row 2 holds 'yes'"):
        read_table(write(tmp_path, "x,y\n1,0\n2,yes\n"), "y", None)


def test_text_that_is_not_utf8_in_a_column_names_the_row(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes("x,city,y\n1,Paris,0\n2,Orl\xe9ans,1\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"column 'city' is not UTF-8 text: row 2"):
        read_table(path, "y", None)


def test_ids_keep_their_type_and_declared_categorical_keep_their_zeros(tmp_path):
    import pyarrow as pa

    path = write(tmp_path, "id,x,y\n007,1,0\n012,2,1\n")
    assert read_table(path, "y", "id").table.schema.field("id").type == pa.int64()
    as_text = read_table(path, "y", "id", {"id": "categorical"}).table.column("id")
    assert as_text.to_pylist() == ["007", "012"]


def test_the_label_is_optional(tmp_path):
    """In a vertical job one party holds the label; the others upload features and ids only."""
    prepared = read_table(write(tmp_path, "id,x,c\n1,2,a\n2,3,b\n"), None, "id")
    assert prepared.label is None and prepared.table.column_names == ["id", "x", "c"]


# --------------------------------------------------------------------------- schema files


def test_a_schema_file_in_toml_or_json_maps_columns_to_kinds(tmp_path):
    toml = tmp_path / "schema.toml"
    toml.write_text('branch = "categorical"\n"default.next" = "numeric"\n')
    assert load_schema(toml) == {"branch": "categorical", "default.next": "numeric"}
    js = tmp_path / "schema.json"
    js.write_text('{"branch": "categorical"}')
    assert load_schema(js) == {"branch": "categorical"}


def test_a_bad_schema_file_quotes_the_column_and_the_kind(tmp_path):
    bad = tmp_path / "schema.toml"
    bad.write_text('branch = "text"\n')
    with pytest.raises(DatasetError, match=r"column 'branch' the kind 'text'.*numeric and categ"):
        load_schema(bad)
    broken = tmp_path / "schema.json"
    broken.write_text("{")
    with pytest.raises(DatasetError, match="is not valid JSON"):
        load_schema(broken)
    path = write(tmp_path, "x,y\n1,0\n")
    with pytest.raises(DatasetError, match=r"names columns .* does not have: 'z'"):
        read_table(path, "y", None, {"z": "numeric"})
    with pytest.raises(DatasetError, match="declares the label column 'y' categorical"):
        read_table(path, "y", None, {"y": "categorical"})


# --------------------------------------------------------------------------- streaming


def _big_csv(tmp_path: Path, rows: int = 20_000) -> Path:
    lines = [
        f"C{n:06d},{n * 0.25},{['north', 'south', 'east'][n % 3]},{n % 4}" for n in range(rows)
    ]
    return write(tmp_path, "id,x,region,y\n" + "\n".join(lines) + "\n")


def test_a_streamed_upload_seals_what_reading_the_file_whole_gives(tmp_path):
    """Many batches or one: the same schema digest, rows and label summary in the manifest,
    and the enclave opens the same table."""
    import secrets

    import pyarrow as pa

    from party_client.datasets import seal_batches
    from party_client.spool import SealedSpool
    from protocols import stream
    from protocols.documents import schema_columns, schema_sha256

    path = _big_csv(tmp_path)
    whole = read_table(path, "y", "id")  # one block
    scan = TableScan(path, "y", "id", block_size=16 << 10)
    key = secrets.token_bytes(32)
    with SealedSpool(tmp_path / "spool", key, b"ds-1", chunk_size=4096) as spool:
        marks = seal_batches(scan, spool)
        size, digest = spool.finish()
        blob = b"".join(spool.pieces())
    assert len(marks) > 10  # really many batches
    assert marks[-1][1] == scan.rows == whole.table.num_rows == 20_000
    assert len(blob) == size and hashlib.sha256(blob).hexdigest() == digest
    assert schema_sha256(schema_columns(scan.schema)) == schema_sha256(
        schema_columns(whole.table.schema)
    )
    assert scan.label_summary == whole.label
    opened = pa.ipc.open_stream(stream.open_stream(key, blob, b"ds-1")).read_all()
    assert opened.equals(whole.table)


def test_value_problems_are_counted_over_every_batch_and_stop_the_stream(tmp_path):
    rows = [f"{n},{'inf' if n in (10, 15000) else n},{n % 2}" for n in range(20_000)]
    path = write(tmp_path, "id,x,y\n" + "\n".join(rows) + "\n")
    scan = TableScan(path, "y", "id", block_size=16 << 10)
    yielded = []
    with pytest.raises(DatasetError, match=r"column 'x' has 2 infinite values \(first at row 11\)"):
        for batch in scan.batches():
            yielded.append(batch)
    assert yielded == []  # the first batch had the problem: nothing was sealed


def test_repeated_ids_in_different_batches_are_found(tmp_path):
    rows = [f"{n if n != 19_999 else 3},{n},{n % 2}" for n in range(20_000)]
    path = write(tmp_path, "id,x,y\n" + "\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"1 repeated ids; for example '3' is on rows 4, 20000"):
        read_table(path, "y", "id", block_size=16 << 10)


def test_label_summaries_agree_with_the_whole_column(tmp_path):
    """The incremental summary is the summary of every label, whatever the batches."""
    import numpy as np

    from protocols.objectives import summarize_labels

    for labels in ([0, 1] * 5000, [n % 5 for n in range(10_000)], [n / 3 for n in range(10_000)]):
        lines = [f"{n},{y}" for n, y in enumerate(labels)]
        path = write(tmp_path, "x,y\n" + "\n".join(lines) + "\n")
        streamed = read_table(path, "y", None, block_size=8 << 10).label
        expected = summarize_labels("y", np.array(labels, dtype=np.float32), "f")
        assert streamed == expected
