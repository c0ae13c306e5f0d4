"""A party's side of real tables against real processes: categorical columns and --schema,
the streamed upload through a private spool file, the propose options and their refusals,
the review, and the files results are written to."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import party_client
from party_client.datasets import SEALING, SENDING, UploadProgress
from party_client.home import PartyHome
from party_client.remote import CoordinatorError
from protocols.documents import DatasetManifest
from protocols.statements import Envelope
from tests.e2e.conftest import LABEL, Running, credit_rows, detente, propose, write_csv

pytestmark = pytest.mark.e2e


def with_region(table: pa.Table) -> pa.Table:
    """The credit rows with a text column (a categorical feature)."""
    regions = [["north", "south", "east", "west"][n % 4] for n in range(table.num_rows)]
    return table.append_column("REGION", pa.array(regions))


def manifest_of(home: Path, dataset_id: str) -> DatasetManifest:
    raw = (home / "datasets" / f"{dataset_id}.manifest").read_bytes()
    return DatasetManifest.verify(Envelope.from_bytes(raw))


def spool_files(home: Path) -> list[Path]:
    folder = home / "spool"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_text_columns_upload_as_categories_and_a_schema_overrides_the_kind(
    running: Running, tmp_path: Path
) -> None:
    home = running.party("cat-alice")
    detente(["party", "attest"], home)
    csv = write_csv(with_region(credit_rows(0, 300)), tmp_path / "regions.csv")
    schema = tmp_path / "schema.toml"
    schema.write_text('EDUCATION = "categorical"\n')
    done = detente(
        [
            *["party", "upload", str(csv), "--label", LABEL, "--id", "ID"],
            *["--schema", str(schema), "--dataset-id", "cat-ds", "--publish-schema", "--json"],
        ],
        home,
    )
    uploaded = json.loads(done.stdout)
    assert uploaded["categorical"] == ["EDUCATION", "REGION"] and uploaded["label"] == LABEL
    assert "checked and sealed" not in done.stderr  # --json: no progress lines
    manifest = manifest_of(home, "cat-ds")
    types = {c["name"]: c["type"] for c in manifest.public_schema or []}
    assert types["REGION"] == "string" and types["EDUCATION"] == "string"
    assert types["LIMIT_BAL"] == "float" and types["ID"] == "int64"
    assert manifest.label is not None and manifest.label.kind == "binary"

    # A text value in a column the schema declares numeric: its row and column, nothing sent.
    numeric = tmp_path / "numeric.json"
    numeric.write_text('{"REGION": "numeric"}')
    refused = detente(
        ["party", "upload", str(csv), "--label", LABEL, "--id", "ID", "--schema", str(numeric)],
        home,
        check=False,
    )
    assert refused.returncode == 1, refused.stderr
    assert "column 'REGION' is not numeric: row 1 holds 'north'" in refused.stderr
    assert "Traceback" not in refused.stderr
    listed = json.loads(detente(["party", "datasets", "--json"], home).stdout)
    assert [d["dataset_id"] for d in listed] == ["cat-ds"]
    assert spool_files(home) == []


def test_a_streamed_upload_reports_progress_and_leaves_no_spool(
    running: Running, tmp_path: Path
) -> None:
    """Through the library: the spool is private while it exists and gone afterwards, also
    when the coordinator refuses the upload; piped, the CLI prints progress lines."""
    home = running.party("spool-bob")
    detente(["party", "attest"], home)
    csv = write_csv(credit_rows(1000, 20_000), tmp_path / "bob.csv")  # 2 MB: several pieces
    h = PartyHome(home)
    seen: list[UploadProgress] = []
    modes: set[int] = set()

    def progress(p: UploadProgress) -> None:
        seen.append(p)
        for path in spool_files(home):
            modes.add(stat.S_IMODE(path.stat().st_mode))

    done = party_client.upload(
        h, h.policy(), csv, LABEL, "ID", "spool-ds", chunk_size=4096, progress=progress
    )
    assert modes == {0o600} and stat.S_IMODE((home / "spool").stat().st_mode) == 0o700
    assert spool_files(home) == []
    phases = [p.phase for p in seen]
    assert phases[0] == SEALING and phases[-1] == SENDING and phases.count(SENDING) > 1
    last = seen[-1]
    assert (last.rows, last.total_rows) == (20_000, 20_000)
    assert last.bytes == last.total_bytes == done.ciphertext_size
    sent = [p.rows for p in seen if p.phase == SENDING]
    assert sent == sorted(sent)

    # The same id again: the coordinator refuses after the data was streamed; no spool left.
    with pytest.raises(CoordinatorError):
        party_client.upload(h, h.policy(), csv, LABEL, "ID", "spool-ds", progress=progress)
    assert spool_files(home) == []

    piped = detente(["party", "upload", str(csv), "--label", LABEL, "--id", "ID"], home)
    assert "checked and sealed 20,000 rows" in piped.stderr
    assert "sent 20,000 of 20,000 rows" in piped.stderr


def _contribute(
    running: Running, name: str, table: pa.Table, tmp: Path, *args: str
) -> tuple[Path, str]:
    home = running.party(name)
    detente(["party", "attest"], home)
    csv = write_csv(table, tmp / f"{name}.csv")
    detente(["party", "upload", str(csv), "--dataset-id", f"{name}-ds", *args], home)
    return home, f"{name}-ds"


def _review(home: Path, job_id: str) -> dict[str, Any]:
    """The review `approve --json` shows (declined at its prompt: nothing is approved)."""
    shown = detente(["party", "approve", job_id, "--json"], home, check=False, input="n\n")
    return dict(json.loads(shown.stdout.splitlines()[0]))


def test_vertical_proposals_name_an_id_column_for_each_data_set_and_one_label(
    running: Running, tmp_path: Path
) -> None:
    rows = credit_rows(5000, 200)
    history = rows.select(["ID", "PAY_0", "PAY_2", LABEL])
    bills = rows.select(["ID", "BILL_AMT1", "PAY_AMT1"]).rename_columns(["CUST", "B1", "P1"])
    alice, a_ds = _contribute(running, "v-alice", history, tmp_path, "--label", LABEL, "--id", "ID")
    bob, b_ds = _contribute(running, "v-bob", bills, tmp_path, "--id", "CUST")
    assert manifest_of(bob, b_ds).label is None

    base = ["--join", "vertical", "--rounds", "5"]
    job_id = propose(alice, [a_ds, b_ds], *base, "--id", f"{a_ds}=ID", "--id", f"{b_ds}=CUST")
    review = _review(bob, job_id)
    assert review["join"] == "vertical"
    assert review["id_columns"] == {a_ds: "ID", b_ds: "CUST"}
    assert review["params"]["eval_metric"] == "auc"
    assert review["releases"] == {"model": ["v-alice", "v-bob"]}
    shown = detente(["party", "approve", job_id], bob, check=False, input="n\n").stdout
    assert "vertical join" in shown and "ids in 'CUST'" in shown
    assert "model (json) → v-alice, v-bob" in shown

    refusals = {
        "lacks one for": ["--id", f"{a_ds}=ID"],
        "releases no predictions": ["--id", "ID", "--output", "predictions"],
        "fewer than --min-rows 201": ["--id", "ID", "--min-rows", "201"],
    }
    for message, extra in refusals.items():
        done = propose(alice, [a_ds, b_ds], *base, *extra, check=False)
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert "nothing was proposed" in done.stderr
    _, c_ds = _contribute(
        running, "v-carol", rows.select(["ID", "AGE", LABEL]), tmp_path, "--label", LABEL
    )
    done = propose(alice, [a_ds, c_ds], *base, "--id", "ID", check=False)
    assert done.returncode == 1
    assert f"data sets '{a_ds}', '{c_ds}' each have a label" in done.stderr
    done = propose(alice, [b_ds], "--join", "vertical", "--id", "CUST", check=False)
    assert "no data set of this vertical job has a label" in done.stderr
    # The proposer's jobs: only the first proposal was made.
    listed = json.loads(detente(["party", "jobs", "--json"], alice).stdout)
    assert [j["job_id"] for j in listed] == [job_id]


def test_objectives_validation_and_outputs_are_chosen_at_propose(
    running: Running, tmp_path: Path
) -> None:
    rows = credit_rows(5400, 400)
    alice, a_ds = _contribute(
        running, "o-alice", rows.slice(0, 200), tmp_path, "--label", LABEL, "--id", "ID"
    )
    bob, b_ds = _contribute(
        running, "o-bob", rows.slice(200, 200), tmp_path, "--label", LABEL, "--id", "ID"
    )
    sets = [a_ds, b_ds]
    job_id = propose(alice, sets, "--id", "ID", "--objective", "multi:softprob", "--rounds", "5")
    review = _review(bob, job_id)
    assert review["objective"] == "multi:softprob"
    assert review["params"]["num_class"] == 2 and review["params"]["eval_metric"] == "mlogloss"

    job_id = propose(
        alice,
        sets,
        "--id",
        "ID",
        "--objective",
        "reg:squarederror",
        "--validation-fraction",
        "0.2",
        "--early-stopping-rounds",
        "3",
        "--metrics-every",
        "2",
        "--min-rows",
        "400",
        "--output",
        "model",
        "--output",
        "metrics",
        "--output",
        "importance",
        "--output",
        "predictions",
        "--model-format",
        "ubj",
    )
    review = _review(bob, job_id)
    assert review["params"]["eval_metric"] == "rmse"
    assert (review["validation_fraction"], review["early_stopping_rounds"]) == (0.2, 3)
    assert (review["metrics_every"], review["min_rows"], review["model_format"]) == (2, 400, "ubj")
    assert review["releases"] == {
        "model": ["o-alice", "o-bob"],
        "metrics": ["o-alice", "o-bob"],
        "importance": ["o-alice", "o-bob"],
        f"predictions.{a_ds}": ["o-alice"],
        f"predictions.{b_ds}": ["o-bob"],
    }
    shown = detente(["party", "approve", job_id], bob, check=False, input="n\n").stdout
    assert "20% of the rows held out for validation" in shown
    assert "early stopping after 3 rounds" in shown and "refuses fewer than 400 rows" in shown
    assert f"predictions.{b_ds} (its owner's rows) → o-bob" in shown

    refusals = {
        "early_stopping_rounds needs a validation_fraction": ["--early-stopping-rounds", "3"],
        "set it with --seed": ["--param", "seed=4"],
        "differs from the objective": ["--param", "objective=reg:squarederror"],
        "400 rows in all, fewer than --min-rows 401": ["--min-rows", "401"],
    }
    for message, extra in refusals.items():
        done = propose(alice, sets, "--id", "ID", *extra, check=False)
        assert done.returncode == 1 and message in done.stderr, done.stderr
    usage = {
        "'sideways' is not one of horizontal, vertical": ["--join", "sideways"],
        "'reg:nonsense' is not one of": ["--objective", "reg:nonsense"],
        "'weights' is not one of model": ["--output", "weights"],
        "'c-ds=ID' must be DATASET=COL": ["--id", "c-ds=ID"],
    }
    for message, extra in usage.items():
        done = propose(alice, sets, *extra, check=False)
        assert done.returncode == 2 and message in done.stderr, done.stderr


def _results(home: Path, job_id: str, out: Path) -> dict[str, str]:
    args = ["party", "results", job_id, "--out", str(out), "--wait", "300", "--json"]
    return dict(json.loads(detente(args, home).stdout))


def test_results_are_written_to_files_named_by_kind_readable_by_the_owner_only(
    running: Running, tmp_path: Path
) -> None:
    """A horizontal job on a categorical column releasing every output: each file named by
    its kind, each owner its own predictions only, every file of mode 0600."""
    rows = with_region(credit_rows(6000, 400))
    alice, a_ds = _contribute(
        running, "r-alice", rows.slice(0, 200), tmp_path, "--label", LABEL, "--id", "ID"
    )
    bob, b_ds = _contribute(
        running, "r-bob", rows.slice(200, 200), tmp_path, "--label", LABEL, "--id", "ID"
    )
    outputs = [
        a for o in ("model", "metrics", "importance", "predictions") for a in ("--output", o)
    ]
    job_id = propose(
        alice, [a_ds, b_ds], "--id", "ID", "--rounds", "3", *outputs, "--model-format", "ubj"
    )
    for home in (alice, bob):
        detente(["party", "approve", job_id, "--yes"], home)
    out = tmp_path / "alice-results"
    written = _results(alice, job_id, out)
    assert written == {
        "model": str(out / "model.ubj"),
        "metrics": str(out / "metrics.json"),
        "importance": str(out / "importance.json"),
        f"predictions.{a_ds}": str(out / f"predictions.{a_ds}.csv"),
    }
    for path in written.values():
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    assert json.loads(Path(written["metrics"]).read_text())["objective"] == "binary:logistic"
    gains = json.loads(Path(written["importance"]).read_text())
    assert gains and all(isinstance(v, float) for v in gains.values())
    assert Path(written[f"predictions.{a_ds}"]).read_text().count("\n") == 201  # header + rows
    theirs = _results(bob, job_id, tmp_path / "bob-results")
    assert sorted(theirs) == sorted(["model", "metrics", "importance", f"predictions.{b_ds}"])


def test_a_vertical_job_on_a_label_one_party_holds_runs_through_the_cli(
    running: Running, tmp_path: Path
) -> None:
    rows = credit_rows(7000, 300)
    history = rows.select(["ID", "PAY_0", "PAY_2", "PAY_3", LABEL])
    bills = with_region(rows.select(["ID", "BILL_AMT1", "PAY_AMT1"])).rename_columns(
        ["CUST", "B1", "P1", "REGION"]
    )
    alice, a_ds = _contribute(
        running, "vj-alice", history, tmp_path, "--label", LABEL, "--id", "ID"
    )
    bob, b_ds = _contribute(running, "vj-bob", bills, tmp_path, "--id", "CUST")
    job_id = propose(
        alice,
        [a_ds, b_ds],
        *["--join", "vertical", "--id", f"{a_ds}=ID", "--id", f"{b_ds}=CUST"],
        *["--rounds", "3", "--output", "model", "--output", "metrics"],
    )
    for home in (alice, bob):
        detente(["party", "approve", job_id, "--yes"], home)
    for home, name in ((alice, "a"), (bob, "b")):
        written = _results(home, job_id, tmp_path / f"vj-{name}")
        assert sorted(Path(p).name for p in written.values()) == ["metrics.json", "model.json"]
