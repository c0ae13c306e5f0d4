"""Sealed models through the real coordinator, enclave worker and `detente party` CLI.

One cluster for the module and one sealed job: alice and bob own the data
(with a categorical column), alice and carol may query the model, bob may not,
erin and frank have budgets the restart and rollback tests spend, and dave is
registered but named nowhere. The tests run in file order: retirement, which
destroys the model, is last.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import party_client
from detente.cluster import ClusterError, Process
from party_client.home import PartyHome
from party_client.remote import CoordinatorError
from protocols.documents import ModelRetirement
from protocols.errors import NotAllowed
from tests.e2e.conftest import (
    LABEL,
    Running,
    assert_nowhere,
    canary_encodings,
    contribute,
    credit_rows,
    detente,
    propose,
    untrusted_files,
    wait_state,
    write_csv,
)

pytestmark = pytest.mark.e2e

ROUNDS = 15
BUDGETS = {
    "alice": "100000",
    "carol": "400/300",  # rows in all / per UTC day
    "erin": "100",
    "frank": "100",
}


def with_region(table: pa.Table) -> pa.Table:
    """Credit rows with a text column: a categorical feature the model records."""
    regions = [["north", "south", "east", "west"][n % 4] for n in range(table.num_rows)]
    return table.append_column("REGION", pa.array(regions))


@dataclass
class Sealed:
    running: Running
    job_id: str
    homes: dict[str, Path]
    tmp: Path
    tables: dict[str, pa.Table] = field(repr=False)  # what alice and bob uploaded

    def home(self, name: str) -> Path:
        return self.homes[name]

    def rows(self, start: int, count: int, ids: str | None = None) -> pa.Table:
        """Held-out credit rows as a querier sends them: features, an ID column, no label."""
        table = with_region(credit_rows(start, count)).drop_columns([LABEL])
        if ids is not None:
            names = [f"{ids}-{n}" for n in range(count)]
            table = table.set_column(0, "ID", pa.array(names))
        return table

    def predict(self, who: str, table: pa.Table, out: str, *extra: str, check: bool = True) -> Any:
        """`detente party predict` of ``table`` (its ID column kept here with --id)."""
        path = write_csv(table, self.tmp / f"query-{secrets.token_hex(4)}.csv")
        args = ["party", "predict", self.job_id, str(path), "--out", str(self.tmp / out)]
        if "ID" in table.column_names:
            args += ["--id", "ID"]
        return detente([*args, *extra], self.home(who), check=check)

    def predict_json(self, who: str, table: pa.Table, out: str, *extra: str) -> dict[str, Any]:
        return dict(json.loads(self.predict(who, table, out, "--json", *extra).stdout))


@pytest.fixture(scope="module")
def sealed(running: Running, tmp_path_factory: pytest.TempPathFactory) -> Sealed:
    tmp = tmp_path_factory.mktemp("sealed")
    homes: dict[str, Path] = {}
    tables = {
        "alice": with_region(credit_rows(0, 500)),
        "bob": with_region(credit_rows(500, 400)),
    }
    for name, table in tables.items():
        homes[name], _ = contribute(running, name, table, tmp)
    for name in ("carol", "dave", "erin", "frank"):
        homes[name] = running.party(name)
        detente(["party", "attest"], homes[name])
    queries = [arg for name, budget in BUDGETS.items() for arg in ("--query", f"{name}={budget}")]
    job_id = propose(
        homes["alice"],
        ["alice-ds", "bob-ds"],
        "--id",
        "ID",
        "--rounds",
        str(ROUNDS),
        "--sealed",
        *queries,
        "--output",
        "metrics",
    )
    detente(["party", "approve", job_id, "--yes"], homes["alice"])
    # bob may not query the model: the review says so, and he confirms.
    refused = detente(["party", "approve", job_id, "--yes"], homes["bob"], check=False)
    assert refused.returncode == 1 and "you may not query it" in refused.stderr
    detente(["party", "approve", job_id, "--yes", "--accept-warnings"], homes["bob"])
    done = wait_state(homes["alice"], job_id, ("succeeded", "failed"), timeout=300)
    assert done["state"] == "succeeded", done
    return Sealed(running, job_id, homes, tmp, tables)


# --------------------------------------------------------------------------- the worker


def _enclave(running: Running) -> Process:
    (process,) = [p for p in running.c.processes if p.name == "enclave" and p.popen.poll() is None]
    return process


def _stop_enclave(running: Running) -> None:
    _enclave(running).stop()


def _start_enclave(running: Running, tag: str) -> None:
    """Start the worker again on its port (the coordinator keeps its address)."""
    host = running.root / "enclave-host"
    port = running.enclave.rsplit(":", 1)[1]
    port_file = host / f"enclave-{tag}.port"
    args = ["libos", "run", str(host / "instance"), "--", "--port", port]
    running.c.spawn("enclave", [*args, "--port-file", str(port_file)], port_file, host / "logs")


@pytest.fixture
def worker_restored(sealed: Sealed) -> Iterator[None]:
    """Whatever a test does to the worker, the next test finds one running."""
    yield
    if not any(p.name == "enclave" and p.popen.poll() is None for p in sealed.running.c.processes):
        _start_enclave(sealed.running, f"restored-{secrets.token_hex(4)}")


# --------------------------------------------------------------------------- the tests


def test_the_review_states_that_nobody_receives_the_model(sealed: Sealed) -> None:
    shown = detente(["party", "approve", sealed.job_id, "--json"], sealed.home("bob"), check=False)
    review = json.loads(shown.stdout.splitlines()[0])
    model = review["model"]
    assert (model["disposition"], model["model_id"]) == ("sealed", sealed.job_id)
    assert (model["answer"], model["digits"]) == ("probability", None)
    budgets = {q["name"]: (q["total_rows"], q["rows_per_day"]) for q in model["queriers"]}
    assert budgets == {
        "alice": (100_000, None),
        "carol": (400, 300),
        "erin": (100, None),
        "frank": (100, None),
    }
    assert "model" not in review["releases"]


def test_a_sealed_job_releases_no_model_to_anyone(sealed: Sealed) -> None:
    for who in ("alice", "bob"):
        out = sealed.tmp / f"results-{who}"
        written = json.loads(
            detente(
                ["party", "results", sealed.job_id, "--out", str(out), "--json"], sealed.home(who)
            ).stdout
        )
        assert written["sealed_model"] == sealed.job_id
        assert set(written) == {"metrics", "sealed_model"}
        assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    human = detente(["party", "results", sealed.job_id, "--out", str(out)], sealed.home("alice"))
    assert "released to nobody; query it with `detente party predict" in human.stdout

    # Asking the coordinator for the model itself: a clear refusal, to its owners too.
    for who in ("alice", "bob"):
        with sealed.running.remote(sealed.home(who)) as remote:
            with pytest.raises(CoordinatorError, match="released to no one") as refused:
                remote.fetch_output(sealed.job_id, "model")
        assert refused.value.kind is NotAllowed

    status = json.loads(
        detente(["party", "status", sealed.job_id, "--json"], sealed.home("bob")).stdout
    )
    assert status["model"] == {"model_id": sealed.job_id, "state": "sealed"}
    text = detente(["party", "status", sealed.job_id], sealed.home("alice")).stdout
    assert f"sealed model {sealed.job_id}: sealed" in text


def test_the_models_each_party_sees(sealed: Sealed) -> None:
    (mine,) = json.loads(detente(["party", "models", "--json"], sealed.home("alice")).stdout)
    assert (mine["model_id"], mine["state"], mine["answer"]) == (
        sealed.job_id,
        "sealed",
        "probability",
    )
    assert sorted(o["name"] for o in mine["owners"]) == ["alice", "bob"]
    assert sorted(q["name"] for q in mine["queriers"]) == sorted(BUDGETS)
    # carol only queries the model: she sees it and the terms that sealed it (her budget
    # and the answer's shape are in them), as an owner does.
    (hers,) = json.loads(detente(["party", "models", "--json"], sealed.home("carol")).stdout)
    assert hers["model_id"] == sealed.job_id
    assert sorted(q["name"] for q in hers["queriers"]) == sorted(BUDGETS)
    assert hers["answer"] == "probability"
    assert json.loads(detente(["party", "models", "--json"], sealed.home("dave")).stdout) == []


def _plaintext_model(sealed: Sealed) -> tuple[Any, dict[str, list[str]], list[str]]:
    """The same model trained in plaintext: the uploaded rows read by the upload's rules,
    joined and encoded by protocols.training, the terms' parameters."""
    import xgboost as xgb

    from party_client.tables import read_table
    from protocols import training

    named = []
    for name, table in sealed.tables.items():
        csv = write_csv(table, sealed.tmp / f"plain-{name}.csv")
        named.append((f"{name}-ds", read_table(csv, LABEL, "ID").table))
    joined = training.join_horizontal(named, {d: "ID" for d, _ in named})
    x, y, names = training.training_table(joined, LABEL)
    categories = {
        n: training.categories_of([joined], n)
        for n in names
        if training.is_categorical(joined.schema.field(n).type)
    }
    assert categories == {"REGION": ["east", "north", "south", "west"]}
    terms = party_client.fetch_job(PartyHome(sealed.home("alice")), sealed.job_id).terms
    model = xgb.train(
        terms.train_params(),
        xgb.DMatrix(x, label=y, enable_categorical=True),
        num_boost_round=terms.num_rounds,
    )
    return model, categories, names


def _plain_predict(sealed: Sealed, model: Any, table: pa.Table, cats: Any, names: Any) -> Any:
    import xgboost as xgb

    from party_client.tables import read_table
    from protocols import training

    csv = write_csv(table, sealed.tmp / f"plain-query-{secrets.token_hex(4)}.csv")
    read = read_table(csv, None, "ID").table
    ready = training.prediction_table(read, cats, names)
    return model.predict(xgb.DMatrix(ready, enable_categorical=True))


def test_queriers_get_the_plaintext_models_predictions_and_ids_stay_here(sealed: Sealed) -> None:
    model, categories, names = _plaintext_model(sealed)
    canary = f"CANARY-{secrets.token_hex(8)}"
    rows = sealed.rows(2000, 250, ids=canary)
    plain = _plain_predict(sealed, model, rows, categories, names)

    # carol through the CLI, to Parquet (exact values) with her ids next to them.
    answered = sealed.predict_json("carol", rows, "carol.parquet")
    assert (answered["rows"], answered["columns"]) == (250, ["prediction"])
    assert answered["remaining"] == {"total_rows": 150, "rows_today": 50}
    assert answered["id_column"] == "ID" and answered["simulation"] is True
    out = Path(answered["out"])
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    scores = pq.read_table(out)
    assert scores.column_names == ["ID", "prediction"]
    assert scores.column("ID").to_pylist() == rows.column("ID").to_pylist()
    assert np.array_equal(scores.column("prediction").to_numpy(), plain)

    # alice through the library, on a table in memory (the id column left out), and
    # through the CLI to CSV, whose human output names the budget left.
    features = rows.drop_columns(["ID"])
    home = PartyHome(sealed.home("alice"))
    with party_client.QuerySession(home, sealed.job_id) as session:
        table = session.predict_table(features)
        assert np.array_equal(table.column("prediction").to_numpy(), plain)
        assert session.last is not None and session.last.remaining.total == 100_000 - 250
        assert session.last.remaining.today is None and session.last.rows == 250
        assert session.predict_table(features.slice(0, 10)).equals(table.slice(0, 10))
        assert session.last.remaining.total == 100_000 - 260
    as_dict = {name: features.column(name).to_pylist() for name in features.column_names}
    assert party_client.predict_table(home, sealed.job_id, as_dict).equals(table)
    shown = sealed.predict("alice", rows, "alice.csv")
    assert "wrote 250 predictions (prediction) next to the ids of 'ID'" in shown.stdout
    assert "budget left: 99,240 rows in all" in shown.stdout
    assert "answered 250 rows" in shown.stderr  # progress, piped: plain lines
    written = (sealed.tmp / "alice.csv").read_text().splitlines()
    assert written[0] == '"ID","prediction"' and written[1].startswith(f'"{canary}-0",')

    # The ids never left the parties: no coordinator or enclave host file holds them.
    assert_nowhere(canary_encodings(text=canary), untrusted_files(sealed.running))


def test_a_party_not_named_is_refused_and_charged_nothing(sealed: Sealed) -> None:
    rows = sealed.rows(3000, 10)
    done = sealed.predict("dave", rows, "dave-scores.csv", check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"no sealed model '{sealed.job_id}' that you own or may query" in done.stderr
    done = sealed.predict("bob", rows, "bob-scores.csv", check=False)
    assert done.returncode == 1
    assert f"you are not a querier of model '{sealed.job_id}'" in done.stderr
    assert "names you with `detente party propose --sealed --query" in done.stderr
    assert (
        not (sealed.tmp / "dave-scores.csv").exists()
        and not (sealed.tmp / "bob-scores.csv").exists()
    )


def test_a_wrong_schema_fails_naming_the_columns(sealed: Sealed) -> None:
    rows = sealed.rows(3100, 20)
    wrong = rows.drop_columns(["PAY_0"]).append_column("EXTRA", pa.array([1.0] * 20))
    wrong = wrong.set_column(
        wrong.column_names.index("REGION"), "REGION", pa.array(list(range(20)))
    )
    done = sealed.predict("erin", wrong, "erin.csv", check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    for named in ("lacks the column(s) 'PAY_0'", "'EXTRA'", "categorical column(s) 'REGION'"):
        assert named in done.stderr, done.stderr
    # The label column is a column the model does not take.
    labelled = with_region(credit_rows(3100, 20))
    done = sealed.predict("erin", labelled, "erin.csv", check=False)
    assert done.returncode == 1 and repr(LABEL) in done.stderr
    # Nothing was charged: erin still has her whole budget.
    answered = sealed.predict_json("erin", rows.slice(0, 1), "erin.csv")
    assert answered["remaining"] == {"total_rows": 99, "rows_today": None}


def test_a_query_over_budget_is_refused_naming_what_is_left(sealed: Sealed) -> None:
    rows = sealed.rows(3200, 100)
    # carol spent 250 of 300 today (and of 400 in all).
    done = sealed.predict("carol", rows, "carol2.csv", check=False)
    assert done.returncode == 1
    assert "has 150 rows in all, 50 today left" in done.stderr, done.stderr
    assert "nothing was charged" in done.stderr
    answered = sealed.predict_json("carol", rows.slice(0, 50), "carol2.csv")
    assert answered["remaining"] == {"total_rows": 100, "rows_today": 0}
    done = sealed.predict("carol", rows.slice(0, 1), "carol2.csv", check=False)
    assert done.returncode == 1 and "0 today left" in done.stderr


def test_an_operator_editing_the_models_record_changes_nothing_a_party_trusts(
    sealed: Sealed,
) -> None:
    """The coordinator's database says dave may query and bob has signed the retirement
    (a retirement signed by dave's key): dave is still refused, by the enclave, and alice
    still sees bob's retirement missing; a record under other terms is refused outright."""
    running = sealed.running
    dave = PartyHome(sealed.home("dave")).signing_key()
    bob_key = PartyHome(sealed.home("bob")).signing_key().verify_key.hex
    job = party_client.fetch_job(PartyHome(sealed.home("alice")), sealed.job_id)
    forged = ModelRetirement(sealed.job_id, job.terms_digest).sign(dave).to_bytes()
    with sqlite3.connect(running.db) as db:
        (queriers, digest) = db.execute(
            "SELECT queriers, terms_digest FROM sealed_models WHERE model_id=?", (sealed.job_id,)
        ).fetchone()
        edited = json.dumps([*json.loads(queriers), dave.verify_key.hex])
        db.execute("UPDATE sealed_models SET queriers=? WHERE model_id=?", (edited, sealed.job_id))
        db.execute(
            "INSERT INTO model_retirements (model_id, owner, envelope, at) VALUES (?, ?, ?, 0)",
            (sealed.job_id, bob_key, forged),
        )
    try:
        done = sealed.predict("dave", sealed.rows(3250, 5), "dave-scores.csv", check=False)
        assert done.returncode == 1, done.stdout
        assert f"is not a querier of model '{sealed.job_id}'" in done.stderr, done.stderr
        assert not (sealed.tmp / "dave-scores.csv").exists()
        (listed,) = json.loads(detente(["party", "models", "--json"], sealed.home("alice")).stdout)
        assert {o["name"]: o["retired"] for o in listed["owners"]} == {
            "alice": False,
            "bob": False,
        }
        with sqlite3.connect(running.db) as db:
            db.execute(
                "UPDATE sealed_models SET terms_digest=? WHERE model_id=?",
                ("0" * 64, sealed.job_id),
            )
        done = detente(["party", "models", "--json"], sealed.home("alice"), check=False)
        assert done.returncode == 1 and "under terms digest 0000000000000000" in done.stderr
    finally:
        with sqlite3.connect(running.db) as db:
            db.execute(
                "UPDATE sealed_models SET queriers=?, terms_digest=? WHERE model_id=?",
                (queriers, digest, sealed.job_id),
            )
            db.execute("DELETE FROM model_retirements WHERE model_id=?", (sealed.job_id,))


def test_the_budget_holds_across_a_worker_restart(sealed: Sealed, worker_restored: None) -> None:
    rows = sealed.rows(3300, 60)
    assert sealed.predict_json("erin", rows, "erin.csv")["remaining"]["total_rows"] == 39
    _stop_enclave(sealed.running)
    _start_enclave(sealed.running, "restart")
    done = sealed.predict("erin", rows, "erin.csv", check=False)
    assert done.returncode == 1 and "has 39 rows in all left" in done.stderr, done.stderr
    assert sealed.predict_json("erin", rows.slice(0, 39), "erin.csv")["remaining"] == {
        "total_rows": 0,
        "rows_today": None,
    }


def test_the_budget_holds_when_the_host_rolls_the_encrypted_files_back(
    sealed: Sealed, worker_restored: None
) -> None:
    """The host keeps a copy of the encrypted file system, lets frank spend his budget,
    then puts the copy back: the enclave refuses the old files rather than forget what
    was spent; with the current files back, the budget is as frank left it."""
    running = sealed.running
    mount = running.root / "enclave-host" / "instance" / "data"
    before, after = sealed.tmp / "data-before", sealed.tmp / "data-after"
    rows = sealed.rows(3400, 80)
    _stop_enclave(running)
    shutil.copytree(mount, before)
    _start_enclave(running, "rollback-1")
    assert sealed.predict_json("frank", rows, "frank.csv")["remaining"]["total_rows"] == 20

    _stop_enclave(running)
    shutil.copytree(mount, after)
    shutil.rmtree(mount)
    shutil.copytree(before, mount)  # the host's rollback
    # The platform counter is past the copy: the worker refuses to open it, so to start.
    with pytest.raises(ClusterError, match=r"encrypted mount /data .* was rolled back"):
        _start_enclave(running, "rollback-2")
    (sealed.tmp / "frank.csv").unlink()
    done = sealed.predict("frank", rows, "frank.csv", check=False)
    assert done.returncode == 1 and "cannot reach the enclave" in done.stderr, done.stderr
    assert not (sealed.tmp / "frank.csv").exists()

    shutil.rmtree(mount)
    shutil.copytree(after, mount)
    _start_enclave(running, "rollback-3")
    done = sealed.predict("frank", rows, "frank.csv", check=False)
    assert done.returncode == 1 and "has 20 rows in all left" in done.stderr, done.stderr


def test_retirement_needs_every_owner_and_later_queries_fail(sealed: Sealed) -> None:
    rows = sealed.rows(3500, 5)
    # Declined at the prompt: nothing is signed.
    asked = detente(
        ["party", "retire", sealed.job_id], sealed.home("alice"), check=False, input="n\n"
    )
    assert asked.returncode == 1 and "nothing can undo it" in asked.stderr
    # A querier that owns no data set cannot retire it.
    done = detente(["party", "retire", sealed.job_id, "--yes"], sealed.home("carol"), check=False)
    assert done.returncode == 1 and "only its data owners retire its model" in done.stderr

    first = json.loads(
        detente(["party", "retire", sealed.job_id, "--yes", "--json"], sealed.home("alice")).stdout
    )
    assert first["state"] == "sealed"
    assert {o["name"]: o["retired"] for o in first["owners"]} == {"alice": True, "bob": False}
    # One owner's signature is not enough: the model still answers.
    assert sealed.predict_json("alice", rows, "still.csv")["rows"] == 5

    shown = detente(["party", "retire", sealed.job_id, "--yes"], sealed.home("bob"))
    assert f"model {sealed.job_id} is retired" in shown.stdout
    done = sealed.predict("alice", rows, "after.csv", check=False)
    assert done.returncode == 1 and f"the model '{sealed.job_id}' was retired" in done.stderr
    assert not (sealed.tmp / "after.csv").exists()
    (listed,) = json.loads(detente(["party", "models", "--json"], sealed.home("bob")).stdout)
    assert listed["state"] == "retired" and listed["retired_at"] > 0
    again = detente(["party", "retire", sealed.job_id, "--yes"], sealed.home("bob"), check=False)
    assert again.returncode == 1 and "already retired" in again.stderr
