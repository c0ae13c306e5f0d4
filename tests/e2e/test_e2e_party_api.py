"""The Python API (`party_client.Party`, `Job`, the estimators) against a real coordinator and
enclave worker, each its own process.

Two parties, bank and insurer, initialised with the CLI (`detente party init`, as a new user
does); everything after that goes through the API. The tests run in file order and share the
data sets uploaded by the first ones.
"""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import xgboost as xgb

import party_client
from detente.demo import features
from party_client import Party
from party_client.estimators import CrossValidationRefused
from party_client.remote import Coordinator, CoordinatorError
from protocols.attestation import EvidenceRefused
from protocols.errors import IntegrityError, NotFound, SetupError, WrongState
from tests.e2e.conftest import LABEL, Running, credit_rows, write_csv

pytestmark = pytest.mark.e2e

ROUNDS = 5


@dataclass
class World:
    running: Running
    tmp: Path
    bank: Party
    insurer: Party
    tables: dict[str, pa.Table]


@pytest.fixture(scope="module")
def world(running: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("api")
    homes = {name: running.party(name) for name in ("bank", "insurer")}
    tables = {"bank": credit_rows(0, 300), "insurer": credit_rows(300, 300)}
    with Party.from_home(homes["bank"]) as bank, Party.from_home(homes["insurer"]) as insurer:
        yield World(running, tmp, bank, insurer, tables)


def plaintext(tables: list[pa.Table], terms: Any) -> xgb.Booster:
    """The model a plaintext XGBoost trains on the same rows, by the terms' parameters."""
    x, y, names = features(pa.concat_tables(tables), LABEL, "ID")
    return xgb.train(
        terms.train_params(), xgb.DMatrix(x, label=y, feature_names=names), terms.num_rounds
    )


def predict_plain(model: xgb.Booster, table: pa.Table) -> Any:
    x, _, names = features(table, LABEL, "ID")
    return model.predict(xgb.DMatrix(x, feature_names=names))


def test_init_with_an_existing_key_encrypted_under_a_passphrase(world: World) -> None:
    """`detente party init --encrypt-keys --key FILE`, then the CLI and the API need the
    passphrase; a missing or wrong one is a clear error."""
    import subprocess
    import sys

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    running = world.running
    key = ed25519.Ed25519PrivateKey.generate()
    pem = world.tmp / "vault.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    home = world.tmp / "vault"

    def run(args: list[str], passphrase: str | None) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "DETENTE_HOME": str(home)}
        if passphrase is not None:
            env["DETENTE_PASSPHRASE"] = passphrase
        return subprocess.run(
            [sys.executable, "-m", "detente", "party", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    token = running.roles.enroll(running.c, "vault")
    init = [
        *("init", "--name", "vault", "--coordinator", running.address),
        *("--coordinator-cert", str(running.coordinator_cert), "--policy", str(running.policy())),
        *("--enrollment-token", token, "--encrypt-keys", "--key", str(pem)),
    ]
    done = run(init, "open sesame")
    assert done.returncode == 0, done.stderr
    assert "your keys are encrypted" in done.stdout
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert raw not in (home / "keys" / "signing.key").read_bytes()
    assert run(["attest"], "open sesame").returncode == 0
    missing = run(["attest"], None)
    assert missing.returncode == 1 and "set DETENTE_PASSPHRASE" in missing.stderr
    wrong = run(["attest"], "open barley")
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr
    with Party.from_home(home, passphrase="open sesame") as vault:
        vault.attest()
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        assert vault.names()[public.hex()] == "vault"


def test_a_home_without_identity_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="run `detente party init`"):
        Party.from_home(tmp_path)


def test_attest_returns_the_verified_enclave_and_names_a_failing_rule(world: World) -> None:
    enclave = world.bank.attest()
    assert enclave.simulation and enclave.mrenclave == world.running.measured["mrenclave"]
    strict = world.running.policy(mrenclave="00" * 32)
    with Party.from_home(world.bank.home.root, policy=strict) as wary:
        with pytest.raises(EvidenceRefused, match="measurement"):
            wary.attest()


def test_upload_reports_progress_and_datasets_lists_both_owners(world: World) -> None:
    seen: list[party_client.UploadProgress] = []
    bank_csv = write_csv(world.tables["bank"], world.tmp / "bank.csv")
    ds = world.bank.upload(bank_csv, label=LABEL, id_column="ID", dataset_id="bank-ds",
                           progress=seen.append)  # fmt: skip
    assert (ds.dataset_id, ds.rows, ds.owner, ds.yours, ds.label) == (
        "bank-ds", 300, "bank", True, LABEL,
    )  # fmt: skip
    assert {p.phase for p in seen} == {"sealing", "sending"}
    assert seen[-1].phase == "sending" and seen[-1].rows == seen[-1].total_rows == 300
    insurer_csv = write_csv(world.tables["insurer"], world.tmp / "insurer.csv")
    world.insurer.upload(insurer_csv, label=LABEL, id_column="ID", dataset_id="insurer-ds")
    # The bank sees only its own data set until a job names the insurer's.
    assert [d.dataset_id for d in world.bank.datasets()] == ["bank-ds"]
    theirs = world.bank.dataset("insurer/insurer-ds")
    assert (theirs.owner, theirs.rows, theirs.yours) == ("insurer", 300, False)
    with pytest.raises(SetupError, match="owned by 'insurer', not 'bank'"):
        world.bank.dataset("bank/insurer-ds")


def test_propose_refuses_an_unknown_data_set_and_a_conflicting_parameter(world: World) -> None:
    with pytest.raises(CoordinatorError) as refused:
        world.bank.propose(["bank-ds", "no-such-ds"], id_column="ID")
    assert refused.value.kind is NotFound and "no-such-ds" in str(refused.value)
    with pytest.raises(SetupError, match="differs from the objective"):
        world.bank.propose(["bank-ds"], params={"objective": "reg:squarederror"})
    assert world.bank.jobs() == []


def test_a_job_end_to_end_through_one_connection(world: World, monkeypatch: Any) -> None:
    opened: list[Coordinator] = []
    original = Coordinator.__init__

    def counting(self: Coordinator, *args: Any, **kwargs: Any) -> None:
        opened.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Coordinator, "__init__", counting)
    bank, insurer = world.bank, world.insurer
    bank.close()
    job = bank.propose(
        [bank.dataset("bank/bank-ds"), "insurer/insurer-ds"],
        objective="binary:logistic",
        params={"max_depth": 3},
        num_boost_round=ROUNDS,
        outputs=["model", "metrics", "importance", "predictions"],
        id_column="ID",
    )
    assert job.state == "proposed" and len(job.awaiting) == 2
    with pytest.raises(party_client.JobTimeout, match="awaits the approval of") as late:
        job.wait(timeout=0.5)
    assert "bank" in str(late.value) and "insurer" in str(late.value)
    bank.approve(job)
    # The insurer reviews the terms from its own Party and approves them.
    review = insurer.review(job.job_id)
    assert review.refusals == [] and {r.name for r in review.recipients} == {"bank", "insurer"}
    assert review.releases()["predictions.insurer-ds"] == ["insurer"]
    insurer.approve(job.job_id)
    states: list[str] = []
    done = job.wait(progress=lambda view: states.append(view.state), timeout=180)
    assert done is job and states[-1] == "succeeded"

    model = job.model()
    assert isinstance(model, xgb.Booster)
    plain = plaintext([world.tables["bank"], world.tables["insurer"]], job.terms)
    rows = credit_rows(2000, 100)
    assert np.array_equal(predict_plain(model, rows), predict_plain(plain, rows))
    assert set(job.metrics()) and set(job.importance())
    mine = job.predictions()
    assert list(mine) == ["bank-ds"] and mine["bank-ds"].num_rows == 300
    assert [j.job_id for j in bank.jobs()] == [job.job_id]
    written = job.results(world.tmp / "results")
    assert set(written) == {"model", "metrics", "importance", "predictions.bank-ds"}
    for path in written.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Every call of the bank's above went through one connection (the insurer's was open).
    assert len([c for c in opened if c is bank.remote]) == 1 and len(opened) == 1


def test_tampered_results_are_refused(world: World) -> None:
    """The operator points the model output at another blob: its digest is not the signed one."""
    (job,) = world.bank.jobs()
    db = world.running.db
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT name, blob_sha256 FROM outputs WHERE job_id=?",
                                 (job.job_id,)).fetchall())  # fmt: skip
        conn.execute(
            "UPDATE outputs SET blob_sha256=? WHERE job_id=? AND name='model'",
            (rows["metrics"], job.job_id),
        )
    try:
        with pytest.raises(IntegrityError, match="does not match the signed statement"):
            world.bank.job(job.job_id).model()
    finally:
        with sqlite3.connect(db) as conn:
            conn.execute(
                "UPDATE outputs SET blob_sha256=? WHERE job_id=? AND name='model'",
                (rows["model"], job.job_id),
            )
    assert isinstance(world.bank.job(job.job_id).model(), xgb.Booster)


def test_a_sealed_model_is_queried_and_retired_through_the_api(world: World) -> None:
    bank, insurer = world.bank, world.insurer
    job = bank.propose(["bank-ds", "insurer-ds"], num_boost_round=ROUNDS, id_column="ID",
                       sealed=True, queriers={"bank": 1000}, outputs=["metrics"])  # fmt: skip
    bank.approve(job)
    insurer.approve(job.job_id, yes=True)  # the insurer may not query it: a warning
    job.wait(timeout=180)
    with pytest.raises(WrongState, match="sealed its model"):
        job.model()
    assert bank.model(job.job_id).state == "sealed"
    rows = credit_rows(2000, 100)
    path = write_csv(rows.drop_columns([LABEL]), world.tmp / "query.csv")
    answer = bank.predict(job, path, id_column="ID")
    assert answer.table.column_names == ["ID", "prediction"] and answer.rows == 100
    plain = plaintext([world.tables["bank"], world.tables["insurer"]], job.terms)
    assert np.allclose(answer.to_numpy(), predict_plain(plain, rows), atol=1e-6)
    in_memory = bank.predict(job.job_id, rows.drop_columns([LABEL, "ID"]).slice(0, 10))
    assert in_memory.remaining.total == 1000 - 110
    assert np.allclose(in_memory.to_numpy(), answer.table.column("prediction").to_numpy()[:10])
    assert bank.retire(job).awaiting[0].name == "insurer"
    assert insurer.retire(job.job_id).retired


def test_the_classifier_in_a_pipeline_trains_through_the_enclave(world: World) -> None:
    from sklearn.pipeline import Pipeline

    names = [n for n in world.tables["bank"].column_names if n not in ("ID", LABEL)]
    clf = party_client.SecureXGBClassifier(
        world.bank,
        label=LABEL,
        id_column="ID",
        n_estimators=ROUNDS,
        max_depth=3,
        on_proposed=lambda job: world.insurer.approve(job.job_id),
        approval_timeout=180,
    )
    pipe = Pipeline([("features", party_client.Columns(names)), ("model", clf)])
    pipe.fit(["bank-ds", "insurer/insurer-ds"])
    rows = credit_rows(2000, 100)  # the ID and the label too: the first step drops them
    proba = pipe.predict_proba(rows)
    plain = plaintext([world.tables["bank"], world.tables["insurer"]], clf.job_.terms)
    assert np.array_equal(proba[:, 1].astype(np.float32), predict_plain(plain, rows))
    assert set(pipe.predict(rows)) <= {0, 1} and list(clf.classes_) == [0, 1]
    truth = rows.column(LABEL).to_numpy()
    assert pipe.score(rows, truth) == np.mean(pipe.predict(rows) == truth)
    assert clf.get_params()["n_estimators"] == ROUNDS
    with pytest.raises(SetupError, match="data set ids name rows"):
        clf.predict(["bank-ds"])


def test_a_sealed_regressor_predicts_through_the_enclave(world: World) -> None:
    reg = party_client.SecureXGBRegressor(
        world.bank,
        label=LABEL,
        id_column="ID",
        n_estimators=ROUNDS,
        sealed=True,
        on_proposed=lambda job: world.insurer.approve(job.job_id, yes=True),
        approval_timeout=180,
    )
    reg.fit(["bank-ds", "insurer-ds"])
    assert reg.booster_ is None and reg.job_.terms.sealed
    assert reg.job_.terms.objective == "reg:squarederror"
    rows = credit_rows(2000, 50)
    got = reg.predict(rows.drop_columns([LABEL, "ID"]))
    plain = plaintext([world.tables["bank"], world.tables["insurer"]], reg.job_.terms)
    assert np.allclose(got, predict_plain(plain, rows), atol=1e-6)
    with pytest.raises(SetupError, match="queried by column name"):
        reg.predict(np.zeros((1, 23)))


def test_cross_validation_is_refused_before_anything_is_proposed(world: World) -> None:
    from sklearn.model_selection import cross_val_score

    before = len(world.bank.jobs())
    clf = party_client.SecureXGBClassifier(world.bank, label=LABEL, id_column="ID")
    with pytest.raises(CrossValidationRefused, match="validation_fraction"):
        cross_val_score(clf, ["bank-ds", "insurer-ds"], cv=2, error_score="raise")
    assert len(world.bank.jobs()) == before
