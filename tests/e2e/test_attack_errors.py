"""Errors that cross the enclave boundary carry no data value (attack 4), and what the
enclave would refuse late is refused at upload or proposal (attack 5).

Canary values are planted in the data of failing jobs — a text id used as a
feature, labels a lying party claims are binary, schemas that differ, infinite
values, a job process that crashes — and then searched for in every file of
the coordinator (database, blobs, logs) and of the enclave's host.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import party_client
from party_client import tables
from party_client.home import PartyHome
from protocols.objectives import LabelSummary
from tests.e2e.conftest import (
    LABEL,
    Running,
    assert_nowhere,
    canary_encodings,
    contribute,
    credit_rows,
    detente,
    propose,
    wait_state,
    write_csv,
)

pytestmark = pytest.mark.e2e

TEXT = f"CANARY-{secrets.token_hex(8)}"
NUMBER = secrets.randbelow(10**9 - 10**8) + 10**8  # nine digits


def with_canaries(table: pa.Table, rows: int = 20) -> pa.Table:
    """Canary text in the ID column and a canary number in LIMIT_BAL, in the first rows."""
    ids = pc.cast(table.column("ID"), pa.string()).to_pylist()
    limits = table.column("LIMIT_BAL").to_pylist()
    for n in range(rows):
        ids[n] = f"{TEXT}-{n}"
        limits[n] = NUMBER
    table = table.set_column(table.column_names.index("ID"), "ID", pa.array(ids))
    index = table.column_names.index("LIMIT_BAL")
    return table.set_column(index, "LIMIT_BAL", pa.array(limits, pa.int64()))


def failed_error(home: Path, job_id: str) -> str:
    status = wait_state(home, job_id, ("failed", "succeeded"), timeout=180)
    assert status["state"] == "failed", status
    return str(status["error"])


class LyingScan:
    """A table scan that checks nothing and claims ``claim`` as the label summary."""

    def __init__(self, table: pa.Table, claim: LabelSummary) -> None:
        self.schema, self.rows, self.label_summary = table.schema, table.num_rows, claim
        self.columns: dict[str, str] = {}
        self._table = table

    def batches(self) -> Iterator[pa.RecordBatch]:
        yield from self._table.to_batches()


def lying_upload(home: Path, table: pa.Table, dataset_id: str, claim: LabelSummary) -> None:
    """A party that skips its own client's checks and signs a false label summary."""
    original = tables.TableScan
    tables.TableScan = lambda *args, **kwargs: LyingScan(table, claim)  # type: ignore[assignment,misc]
    try:
        h = PartyHome(home)
        party_client.upload(h, h.policy(), Path("unused.csv"), LABEL, "ID", dataset_id)
    finally:
        tables.TableScan = original  # type: ignore[misc]


BINARY_CLAIM = LabelSummary(LABEL, "binary", 2, True, True, False)


def test_failing_jobs_name_data_set_and_column_and_leak_no_value(
    running: Running, tmp_path: Path
) -> None:
    rows = with_canaries(credit_rows(3000, 600))

    # A text id used as a feature: the party proposes without --id. Text columns are
    # categories, whose values the model records: one value per row is refused.
    alice, a_ds = contribute(running, "err-alice", rows.slice(0, 200), tmp_path)
    bob, b_ds = contribute(running, "err-bob", rows.slice(200, 200), tmp_path)
    job_id = propose(alice, [a_ds, b_ds], "--rounds", "5")
    for home in (alice, bob):
        detente(["party", "approve", job_id, "--yes"], home)
    error = failed_error(alice, job_id)
    assert f"data set '{a_ds}' column 'ID' holds text with a different value in every row" in error
    assert "--id" in error
    status = detente(["party", "status", job_id], alice).stdout
    assert status.count(error) == 1  # printed once, as the error event

    # Labels a lying party claims are binary.
    carol = running.party("err-carol")
    detente(["party", "attest"], carol)
    bad_labels = rows.slice(400, 200)
    labels = [7.0 if n % 3 == 0 else 0.0 for n in range(bad_labels.num_rows)]
    bad_labels = bad_labels.set_column(
        bad_labels.column_names.index(LABEL), LABEL, pa.array(labels, pa.float32())
    )
    lying_upload(carol, bad_labels, "err-carol-ds", BINARY_CLAIM)
    job_id = propose(carol, [a_ds, "err-carol-ds"], "--rounds", "5", "--id", "ID")
    for home in (alice, carol):
        detente(["party", "approve", job_id, "--yes"], home)
    error = failed_error(carol, job_id)
    assert "data set 'err-carol-ds': label column" in error
    assert "holds classes values, but binary:logistic needs 0 or 1" in error

    # Infinite feature values from a lying party.
    dave = running.party("err-dave")
    detente(["party", "attest"], dave)
    infinite = rows.slice(0, 200)
    pay = infinite.column("PAY_0").to_pylist()
    pay[5] = float("inf")
    infinite = infinite.set_column(infinite.column_names.index("PAY_0"), "PAY_0", pa.array(pay))
    lying_upload(dave, infinite, "err-dave-ds", BINARY_CLAIM)
    job_id = propose(dave, [a_ds, "err-dave-ds"], "--rounds", "5", "--id", "ID")
    for home in (alice, dave):
        detente(["party", "approve", job_id, "--yes"], home)
    error = failed_error(dave, job_id)
    assert "data set 'err-dave-ds' column 'PAY_0' has 1 infinite values" in error

    # Schemas that differ: the first differing column is named.
    renamed = rows.slice(400, 200).rename_columns(
        ["PAY_ZERO" if n == "PAY_0" else n for n in rows.column_names]
    )
    erin, e_ds = contribute(running, "err-erin", renamed, tmp_path)
    job_id = propose(alice, [a_ds, e_ds], "--rounds", "5", "--id", "ID")
    for home in (alice, erin):
        detente(["party", "approve", job_id, "--yes"], home)
    error = failed_error(alice, job_id)
    assert f"data set '{e_ds}' has column 'PAY_ZERO' where the first data set has 'PAY_0'" in error

    # A job process that crashes (SIGSEGV) in the middle of training.
    job_id = propose(
        alice, [a_ds, b_ds], "--rounds", "20000", "--id", "ID", "--param", "max_depth=8"
    )
    for home in (alice, bob):
        detente(["party", "approve", job_id, "--yes"], home)
    pid = _job_pid(running, job_id)
    wait_for_round(alice, job_id)
    os.kill(pid, signal.SIGSEGV)
    error = failed_error(alice, job_id)
    assert "the job process crashed" in error

    # The party really sent the canaries (so the search can find them)...
    sent = write_csv(rows, tmp_path / "sent.csv").read_bytes()
    assert TEXT.encode() in sent and str(NUMBER).encode() in sent
    # ...and no job error, event, log, database row or file of the host has one.
    assert_nowhere(canary_encodings(TEXT, NUMBER), _untrusted(running))


def _untrusted(running: Running) -> list[Path]:
    from tests.e2e.conftest import untrusted_files

    return untrusted_files(running)


def _job_pid(running: Running, job_id: str, timeout: float = 60) -> int:
    """The job process's id, from the worker's log (the host reads it there too)."""
    pattern = re.compile(rf"job {re.escape(job_id)} runs in process (\d+)")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log in (running.root / "enclave-host" / "instance" / "logs").glob("*.log"):
            found = pattern.search(log.read_text(errors="replace"))
            if found:
                return int(found.group(1))
        time.sleep(0.2)
    raise AssertionError(f"the worker never logged the process of {job_id}")


def wait_for_round(home: Path, job_id: str, timeout: float = 300) -> None:
    """Until the job reports a finished round (its checkpoint is then saved)."""
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = json.loads(detente(["party", "status", job_id, "--json"], home).stdout)
        if any(e["kind"] == "round" for e in status["events"]):
            return
        assert status["state"] in ("approved", "running"), status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} reported no round")


def test_an_objective_that_does_not_fit_a_label_is_refused_at_propose(
    running: Running, tmp_path: Path
) -> None:
    """Attack 5: labels 0/1/2 are caught when the job is proposed, not after approvals."""
    rows = credit_rows(3600, 400)
    alice, a_ds = contribute(running, "fit-alice", rows.slice(0, 200), tmp_path)
    classes = rows.slice(200, 200)
    labels = [n % 3 for n in range(classes.num_rows)]
    classes = classes.set_column(classes.column_names.index(LABEL), LABEL, pa.array(labels))
    _, b_ds = contribute(running, "fit-bob", classes, tmp_path)
    done = propose(alice, [a_ds, b_ds], "--id", "ID", check=False)
    assert done.returncode == 1
    assert f"data set '{b_ds}': label column '{LABEL}' holds classes values" in done.stderr
    assert "binary:logistic needs 0 or 1" in done.stderr


def test_upload_refuses_what_the_enclave_would_refuse_late(
    running: Running, tmp_path: Path
) -> None:
    """Attack 5 at the party's door: each refused with the file's row or column named."""
    home = running.party("door")
    detente(["party", "attest"], home)
    rows = credit_rows(4000, 50)
    cases = {
        "labels.csv": (
            rows.set_column(
                rows.column_names.index(LABEL), LABEL, pa.array([0.5] * 50, pa.float64())
            ),
            None,  # continuous labels upload fine; the objective is checked at propose
        ),
        "dupes.csv": (
            rows.set_column(0, "ID", pa.array([1] * 50)),
            "id column 'ID' has 1 repeated ids",
        ),
        "inf.csv": (
            rows.set_column(
                rows.column_names.index("BILL_AMT1"),
                "BILL_AMT1",
                pa.array([float("inf")] + [1.0] * 49),
            ),
            "column 'BILL_AMT1' has 1 infinite values (first at row 1)",
        ),
    }
    for name, (table, message) in cases.items():
        path = write_csv(table, tmp_path / name)
        done = detente(
            ["party", "upload", str(path), "--label", LABEL, "--id", "ID"], home, check=False
        )
        if message is None:
            assert done.returncode == 0, done.stderr
        else:
            assert done.returncode == 1 and message in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text("ID;x;y\n1;2;0\n")
    done = detente(["party", "upload", str(semicolons), "--label", "y"], home, check=False)
    assert done.returncode == 1 and "separated by semicolons" in done.stderr
    latin = tmp_path / "latin.csv"
    latin.write_bytes("ID,montant_d\xfb,y\n1,2,0\n".encode("latin-1"))
    done = detente(["party", "upload", str(latin), "--label", "y"], home, check=False)
    assert done.returncode == 1 and "is not UTF-8 text" in done.stderr
    assert "Traceback" not in done.stderr
    # Only the continuous-label file went through.
    listed = detente(["party", "datasets", "--json"], home).stdout
    assert listed.count("dataset_id") == 1
