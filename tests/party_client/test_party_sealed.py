"""A party's side of sealed models that needs no enclave: proposing (every refusal names the
option to change), the review of sealed terms, reading and sealing query rows (ids stay
here), verifying and opening answers (this test plays the enclave with real keys and the
shared protocol code), result files, the coordinator's model records, and the CLI's words.

The whole path through the real coordinator and worker: tests/e2e/test_e2e_sealed.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from detente.cli import app
from party_client.cli.consent import print_review
from party_client.cli.propose import _grant
from party_client.consent import (
    Review,
    _check_queriers,
    _Me,
    _queries_nothing,
)
from party_client.home import PartyHome
from party_client.job_control import JobView
from party_client.models import _view
from party_client.outputs import file_name
from party_client.proposal import QueryGrant, check_sealing, check_terms
from party_client.queries import (
    _next_step,
    _out_format,
    _write,
    open_answer,
    predict,
    seal_rows,
    sign_query,
)
from party_client.remote import CoordinatorError, RemoteAnswer, RemoteModel, RemoteModelQueries
from party_client.tables import TableScan
from protocols import hpke, predictions, stream
from protocols.documents import (
    MAX_QUERY_ROWS,
    Budget,
    DatasetManifest,
    JobTerms,
    ModelRetirement,
    PredictionAnswer,
    PredictionQuery,
    Querier,
    Recipient,
    party_fingerprint,
)
from protocols.errors import (
    BudgetExhausted,
    DatasetError,
    DetenteError,
    IntegrityError,
    ModelRetired,
    NotAllowed,
    SetupError,
    SignatureError,
)
from protocols.keys import HpkePrivateKey, SigningKey
from protocols.objectives import LabelSummary
from protocols.statements import Envelope

PROPOSER = SigningKey.generate()
MRENCLAVE = "ab" * 32


def grant(name: str = "bank-b", total: int = 10_000, per_day: int | None = 1_000) -> QueryGrant:
    return QueryGrant(name, total, per_day)


# --------------------------------------------------------------------------- proposing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((False, ["model"], [grant()], "probability", None), "add --sealed, or drop them"),
        ((False, ["model"], [], "class", None), "add --sealed"),
        ((False, ["model"], [], "probability", 3), "add --sealed"),
        ((True, ["model", "metrics"], [grant()], "probability", None), "drop --output model"),
        ((True, [], [], "probability", None), "--sealed needs at least one --query NAME=ROWS"),
        ((True, [], [grant(), grant()], "probability", None), "--query names 'bank-b' twice"),
        ((True, [], [grant(total=0)], "probability", None), "ROWS must be at least 1"),
        ((True, [], [grant(per_day=20_000)], "probability", None), "PER_DAY from 1 to ROWS"),
        ((True, [], [grant()], "score", None), "--answer 'score' is not one of"),
        ((True, [], [grant()], "class", 2), "--answer class returns classes: drop --digits"),
        ((True, [], [grant()], "probability", 16), "--digits must be from 0 to 15"),
    ],
)
def test_sealing_options_the_terms_would_refuse_are_refused_by_name(
    args: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(SetupError, match=message) as refused:
        check_sealing(*args, objective="binary:logistic")
    assert str(refused.value).endswith("nothing was proposed")


def test_class_answers_need_a_classification_objective() -> None:
    with pytest.raises(SetupError, match=r"--answer class needs a classification --objective"):
        check_sealing(True, [], [grant()], "class", None, "reg:squarederror")
    check_sealing(True, [], [grant()], "class", None, "multi:softprob")
    check_sealing(True, ["metrics"], [grant(per_day=None)], "probability", 3, "reg:squarederror")
    check_sealing(False, ["model"], [], "probability", None, "binary:logistic")


def sealed_terms(**changes: Any) -> JobTerms:
    me = Recipient("alice", PROPOSER.verify_key, HpkePrivateKey.generate().public_key)
    querier = Querier(
        "bank-b", SigningKey.generate().verify_key, HpkePrivateKey.generate().public_key, 10_000
    )
    fields: dict[str, Any] = {
        "job_id": "job-sealed",
        "datasets": [("a", "3" * 64)],
        "join": "horizontal",
        "objective": "binary:logistic",
        "label": "y",
        "params": {"max_depth": 3},
        "num_rounds": 5,
        "seed": 0,
        "allowed_mrenclaves": [MRENCLAVE],
        "outputs": ["metrics"],
        "recipients": [me],
        "expires_at": int(time.time()) + 3600,
        "proposer": PROPOSER.verify_key.hex,
        "model": "sealed",
        "queriers": [querier],
        "answer": "probability",
        "answer_digits": 3,
    }
    fields.update(changes)
    return JobTerms(**fields)


def manifest(dataset_id: str) -> DatasetManifest:
    return DatasetManifest(
        dataset_id=dataset_id,
        name="",
        owner_key=PROPOSER.verify_key,
        schema_sha256="0" * 64,
        row_count=100,
        ciphertext_sha256="1" * 64,
        ciphertext_size=1000,
        wrapped_key=b"k",
        sealed_to_mrenclave=MRENCLAVE,
        sealed_to_hpke_key=HpkePrivateKey.generate().public_key,
        label=LabelSummary("y", "binary", 2, True, True, False),
    )


def test_sealed_terms_pass_the_checks_before_proposing_and_released_models_are_refused() -> None:
    sets = {"a": manifest("a")}
    check_terms(sealed_terms(), sets)
    with pytest.raises(SetupError, match="seal the model and also release it"):
        check_terms(sealed_terms(outputs=["model"]), sets)


def test_a_sealed_job_writes_no_model_file() -> None:
    terms = sealed_terms(outputs=["metrics"])
    assert file_name(terms, "metrics") == "metrics.json"
    with pytest.raises(IntegrityError, match="which the terms do not release"):
        file_name(terms, "model")


def test_query_options_parse_rows_and_a_daily_limit() -> None:
    import typer

    assert _grant("bank-b=10000") == QueryGrant("bank-b", 10_000, None)
    assert _grant("bank-b=10_000/1,000") == QueryGrant("bank-b", 10_000, 1_000)
    for bad in ("bank-b", "=10", "bank-b=ten", "bank-b=10/", "bank-b=10/x"):
        with pytest.raises(typer.BadParameter, match="NAME=ROWS or NAME=ROWS/PER_DAY"):
            _grant(bad)


def _home(root: Path, name: str = "alice") -> PartyHome:
    home = PartyHome(root / name)
    home.create_identity(name, "127.0.0.1:1")
    home.policy_path.write_text(
        f'mrenclave = ["{MRENCLAVE}"]\nallow_simulation = true\n'
        f'simulation_roots = ["{"cd" * 32}"]\n'
    )
    return home


def _cli(home: PartyHome, *args: str) -> Any:
    return CliRunner().invoke(app, ["party", *args], env={"DETENTE_HOME": str(home.root)})


def test_the_cli_refuses_sealing_options_before_anything_is_contacted(tmp_path: Path) -> None:
    """The home points at a coordinator that does not exist: every refusal comes first."""
    home = _home(tmp_path)
    done = _cli(home, "propose", "--dataset", "a", "--sealed")
    assert done.exit_code == 1 and "--sealed needs at least one --query" in done.stderr
    done = _cli(
        home, "propose", "--dataset", "a", "--sealed", "--query", "b=10", "--output", "model"
    )
    assert done.exit_code == 1 and "drop --output model" in done.stderr
    done = _cli(home, "propose", "--dataset", "a", "--query", "b=10")
    assert done.exit_code == 1 and "add --sealed" in done.stderr
    done = _cli(home, "propose", "--dataset", "a", "--sealed", "--query", "b=lots")
    assert done.exit_code == 2 and "NAME=ROWS or NAME=ROWS/PER_DAY" in done.stderr
    done = _cli(home, "propose", "--dataset", "a", "--sealed", "--query", "b=1", "--answer", "x")
    assert done.exit_code == 2 and "'x' is not one of probability, class" in done.stderr
    done = _cli(home, "propose", "--dataset", "a", "--sealed", "--query", "b=1", "--digits", "16")
    assert done.exit_code == 2 and "--digits" in done.stderr


# --------------------------------------------------------------------------- the review


def _job(terms: JobTerms) -> JobView:
    envelope = terms.sign(PROPOSER)
    return JobView(terms.job_id, "proposed", envelope, terms, [], [], [], "", 0, b"")


def test_the_review_lists_queriers_with_budgets_and_refuses_impostors(tmp_path: Path) -> None:
    home = _home(tmp_path)
    me = _Me.of(home)
    bob = Querier("bob", SigningKey.generate().verify_key, HpkePrivateKey.generate().public_key, 50)
    home.known_parties.remember("bob", party_fingerprint(bob.signing_key, bob.hpke_key))
    mine = Querier("alice", me.key, home.hpke_key().public_key, 500, 100)
    carol = Querier("carol", SigningKey.generate().verify_key, bob.hpke_key, 20)
    myself = Recipient("alice", me.key, home.hpke_key().public_key)
    terms = sealed_terms(recipients=[myself], queriers=[mine, bob, carol])
    found = Review(_job(terms))
    _check_queriers(home, me, {me.key}, found)
    assert found.refusals == []
    shown = {q.name: (q.you, q.owner, q.pin, q.total_rows, q.rows_per_day) for q in found.queriers}
    assert shown == {
        "alice": (True, True, "new", 500, 100),
        "bob": (False, False, "pinned", 50, None),
        "carol": (False, False, "new", 20, None),
    }
    model = found.to_dict()["model"]
    assert (model["disposition"], model["model_id"], model["answer"], model["digits"]) == (
        "sealed",
        "job-sealed",
        "probability",
        3,
    )
    assert [q["name"] for q in model["queriers"]] == ["alice", "bob", "carol"]
    assert _queries_nothing(terms, me.key) == []

    # A querier under my name with another key; another with bob's name and other keys.
    impostor = Querier("alice", SigningKey.generate().verify_key, bob.hpke_key, 10)
    other_bob = Querier("bob", SigningKey.generate().verify_key, bob.hpke_key, 10)
    found = Review(_job(sealed_terms(queriers=[impostor, other_bob])))
    _check_queriers(home, me, {me.key}, found)
    assert len(found.refusals) == 2
    assert (
        "the querier 'alice'" in found.refusals[0]
        and "claims your name or key" in (found.refusals[0])
    )
    assert "the querier 'bob' has fingerprint" in found.refusals[1]
    assert "someone may be impersonating 'bob'" in found.refusals[1]
    assert [q.pin for q in found.queriers] == ["MISMATCH", "MISMATCH"]


def test_a_recipient_and_a_querier_of_one_name_must_be_one_party(tmp_path: Path) -> None:
    home = _home(tmp_path)
    me = _Me.of(home)
    dave = Recipient("dave", SigningKey.generate().verify_key, HpkePrivateKey.generate().public_key)
    fake = Querier("dave", SigningKey.generate().verify_key, dave.hpke_key, 10)
    found = Review(_job(sealed_terms(recipients=[dave], queriers=[fake])))
    _check_queriers(home, me, {me.key}, found)
    assert (
        found.refusals
        and "as a recipient and as a querier with different keys" in (found.refusals[0])
    )


def test_an_owner_who_may_not_query_must_confirm(tmp_path: Path) -> None:
    home = _home(tmp_path)
    terms = sealed_terms()
    (warning,) = _queries_nothing(terms, _Me.of(home).key)
    assert "stays sealed in the enclave and you may not query it: only bank-b may" in warning
    assert _queries_nothing(replace(terms, model="release", queriers=[]), PROPOSER.verify_key) == []


def test_the_review_states_plainly_that_nobody_receives_a_sealed_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = _home(tmp_path)
    me = _Me.of(home)
    bob = Querier(
        "bob", SigningKey.generate().verify_key, HpkePrivateKey.generate().public_key, 10_000, 500
    )
    found = Review(_job(sealed_terms(queriers=[bob])))
    _check_queriers(home, me, {me.key}, found)
    print_review(found)
    shown = capsys.readouterr().out
    assert "model: SEALED in the enclave as 'job-sealed': nobody receives it, not even you" in shown
    assert "each answer holds: the model's probabilities, rounded to 3 decimals" in shown
    assert "bob (not a data owner): 10,000 rows in all, at most 500 a day" in shown
    assert "first seen: will be pinned" in shown
    classes = Review(_job(sealed_terms(queriers=[bob], answer="class", answer_digits=None)))
    print_review(classes)
    assert "each answer holds: the class only" in capsys.readouterr().out


# --------------------------------------------------------------------------- query rows


def test_tables_in_memory_are_read_by_the_upload_rules() -> None:
    table = pa.table(
        {
            "age": pa.array([31, 42], pa.int64()),
            "limit": pa.array([1.5, 2.5], pa.float64()),
            "vip": pa.array([True, False]),
            "region": pa.array(["n", "s"]).dictionary_encode(),
        }
    )
    scan = TableScan(Path("the query table"), None, None, table=table)
    read = pa.Table.from_batches(list(scan.batches()), scan.schema)
    assert [str(t) for t in read.schema.types] == ["float", "float", "float", "string"]
    assert read.column("region").to_pylist() == ["n", "s"]
    when = pa.table({"when": pa.array([1, 2], pa.timestamp("s"))})
    with pytest.raises(DatasetError, match="column 'when' has type timestamp"):
        TableScan(Path("the query table"), None, None, table=when)
    infinite = pa.table({"x": pa.array([1.0, float("inf")])})
    scan = TableScan(Path("the query table"), None, None, table=infinite)
    with pytest.raises(DatasetError, match="column 'x' has 1 infinite values"):
        list(scan.batches())


class Enclave:
    """The enclave's side of one query, done with real keys and the shared protocol code
    (protocols.predictions, stream, hpke): what the worker does, without a model."""

    def __init__(self) -> None:
        self.signing = SigningKey.generate()
        self.hpke = HpkePrivateKey.generate()

    def open_query(self, envelope: Envelope, ciphertext: bytes) -> tuple[PredictionQuery, Any]:
        query = PredictionQuery.verify(envelope)
        assert hashlib.sha256(ciphertext).hexdigest() == query.ciphertext_sha256
        key = hpke.unwrap_key(
            query.wrapped_key,
            self.hpke,
            hpke.query_key_info(query.model_id, query.query_id, self.hpke.public_key),
        )
        plain = stream.open_stream(
            key, ciphertext, predictions.query_associated_data(query.model_id, query.query_id)
        )
        return query, predictions.from_ipc(plain, "the rows")

    def answer(
        self,
        query: Envelope,
        table: Any,
        querier: HpkePrivateKey,
        rows: int | None = None,
        query_id: str | None = None,
    ) -> tuple[RemoteAnswer, PredictionAnswer]:
        asked = PredictionQuery.verify(query)
        qid = query_id or asked.query_id
        key = os.urandom(32)
        blob = stream.seal_stream(
            key, predictions.to_ipc(table), predictions.answer_associated_data(asked.model_id, qid)
        )
        answer = PredictionAnswer(
            asked.model_id,
            qid,
            query.digest,
            rows if rows is not None else asked.rows,
            table.column_names,
            hashlib.sha256(blob).hexdigest(),
            hpke.wrap_key(
                key,
                querier.public_key,
                hpke.answer_key_info(asked.model_id, qid, querier.public_key),
            ),
            Budget(9_000, 400),
        )
        return RemoteAnswer(answer.sign(self.signing).to_bytes(), blob), answer


def _csv(tmp_path: Path, rows: int = 5) -> Path:
    path = tmp_path / "rows.csv"
    pacsv.write_csv(
        pa.table(
            {
                "ID": [f"cust-{i:03d}" for i in range(rows)],
                "LIMIT_BAL": [1000 * (i + 1) for i in range(rows)],
                "REGION": ["north", "south", "east", "west", "north"][:rows],
            }
        ),
        path,
    )
    return path


def _seal(path: Path, id_column: str | None = "ID", model_id: str = "job-sealed") -> Any:
    scan = TableScan(path, None, id_column)
    return seal_rows(scan, model_id, "q-1", None)


def test_query_rows_are_sealed_to_the_enclave_and_ids_stay_here(tmp_path: Path) -> None:
    enclave, me, querier = Enclave(), SigningKey.generate(), HpkePrivateKey.generate()
    sealed, ids = _seal(_csv(tmp_path))
    assert ids.to_pylist() == [f"cust-{i:03d}" for i in range(5)]
    assert repr(sealed) == "SealedRows(rows=5)"  # neither the key nor the ciphertext
    query = sign_query(me, enclave.hpke.public_key, MRENCLAVE, "job-sealed", "q-1", sealed)
    asked, rows = enclave.open_query(query, sealed.ciphertext)
    assert (asked.rows, asked.sealed_to_mrenclave, asked.model_id) == (5, MRENCLAVE, "job-sealed")
    assert abs(asked.issued_at - time.time()) < 60
    assert query.signer == me.verify_key
    # Exactly the feature columns, by the upload's rules; no id and nothing of it.
    assert rows.column_names == ["LIMIT_BAL", "REGION"]
    assert [str(t) for t in rows.schema.types] == ["float", "string"]
    assert b"cust-" not in sealed.ciphertext and b"cust-" not in query.to_bytes()

    # The enclave's answer, verified and opened.
    scores = pa.table({"prediction": pa.array(np.linspace(0.1, 0.5, 5))})
    relayed, signed = enclave.answer(query, scores, querier)
    answer, table = open_answer(relayed, query, enclave.signing.verify_key, querier)
    assert answer == signed and table.equals(scores)
    assert answer.remaining == Budget(9_000, 400)


def test_answers_that_do_not_match_the_query_are_refused(tmp_path: Path) -> None:
    enclave, me, querier = Enclave(), SigningKey.generate(), HpkePrivateKey.generate()
    sealed, _ = _seal(_csv(tmp_path))
    query = sign_query(me, enclave.hpke.public_key, MRENCLAVE, "job-sealed", "q-1", sealed)
    scores = pa.table({"prediction": pa.array([0.5] * 5)})
    relayed, _ = enclave.answer(query, scores, querier)

    # The coordinator alters, truncates or extends the predictions.
    for blob in (
        relayed.ciphertext[:-1],
        relayed.ciphertext + b"\0",
        bytes([relayed.ciphertext[0] ^ 1]) + relayed.ciphertext[1:],
    ):
        with pytest.raises(IntegrityError, match="do not match the enclave's signed answer"):
            open_answer(
                replace(relayed, ciphertext=blob), query, enclave.signing.verify_key, querier
            )
    # An answer signed by any other key than the attested enclave's.
    with pytest.raises(SignatureError, match="not the attested enclave key"):
        open_answer(relayed, query, SigningKey.generate().verify_key, querier)
    # The answer to another query (an earlier one replayed), of other rows, another query id.
    other = sign_query(me, enclave.hpke.public_key, MRENCLAVE, "job-sealed", "q-1", sealed)
    with pytest.raises(IntegrityError, match="another query than the one signed"):
        open_answer(relayed, other, enclave.signing.verify_key, querier)
    short, _ = enclave.answer(query, scores.slice(0, 4), querier, rows=4)
    with pytest.raises(IntegrityError, match="covers 4 rows, the query 5"):
        open_answer(short, query, enclave.signing.verify_key, querier)
    wrong, _ = enclave.answer(query, scores, querier, query_id="q-2")
    with pytest.raises(IntegrityError, match="about query 'q-2'"):
        open_answer(wrong, query, enclave.signing.verify_key, querier)
    # Predictions encrypted to somebody else do not open.
    with pytest.raises(IntegrityError, match="cannot unwrap the key"):
        open_answer(relayed, query, enclave.signing.verify_key, HpkePrivateKey.generate())


def test_a_file_too_large_for_one_query_is_refused_before_sending(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"x": np.zeros(MAX_QUERY_ROWS + 1, dtype=np.float32)}), path)
    with pytest.raises(DatasetError, match=r"more than 1,000,000 rows.*split it"):
        _seal(path, id_column=None)


def test_predictions_are_written_as_the_suffix_says_readable_by_the_party_alone(
    tmp_path: Path,
) -> None:
    table = pa.table({"ID": ["a", "b"], "prediction": [0.25, 0.75]})
    csv = tmp_path / "out" / "scores.csv"
    _write(csv, table, _out_format(csv))
    assert stat.S_IMODE(csv.stat().st_mode) == 0o600
    assert pacsv.read_csv(csv).equals(table)
    parquet = tmp_path / "scores.PARQUET"
    _write(parquet, table, _out_format(parquet))
    assert stat.S_IMODE(parquet.stat().st_mode) == 0o600
    assert pq.read_table(parquet).equals(table)


def test_predict_refuses_what_it_cannot_write_before_contacting_anything(tmp_path: Path) -> None:
    """No attestation record and no coordinator: the refusals come first."""
    home = _home(tmp_path)
    rows = _csv(tmp_path)
    with pytest.raises(SetupError, match=r"must end in \.csv or \.parquet.*nothing was sent"):
        predict(home, "job-sealed", rows, tmp_path / "scores.txt")
    with pytest.raises(SetupError, match="the id column 'prediction' has the name of an answer"):
        predict(home, "job-sealed", rows, tmp_path / "scores.csv", id_column="prediction")
    with pytest.raises(SetupError, match="no attested enclave yet: run `detente party attest`"):
        predict(home, "job-sealed", rows, tmp_path / "scores.csv", id_column="ID")
    assert not (tmp_path / "scores.csv").exists()


@pytest.mark.parametrize(
    ("kind", "hint"),
    [
        (BudgetExhausted, "nothing was charged"),
        (NotAllowed, "names you with `detente party propose --sealed --query NAME=ROWS`"),
        (ModelRetired, None),
    ],
)
def test_refusals_say_what_to_do_next(kind: type[DetenteError], hint: str | None) -> None:
    import grpc

    refused = CoordinatorError("coordinator: the enclave refused", grpc.StatusCode.ABORTED, kind)
    shown = _next_step(refused)
    if hint is None:
        assert shown is refused
        return
    assert isinstance(shown, CoordinatorError) and shown.kind is kind
    assert str(shown).startswith("coordinator: the enclave refused; ") and hint in str(shown)


# --------------------------------------------------------------------------- model records


def _record(terms_digest: str, retirements: list[bytes], **changes: Any) -> RemoteModel:
    fields: dict[str, Any] = {
        "model_id": "job-sealed",
        "job_id": "job-sealed",
        "state": "sealed",
        "terms_digest": terms_digest,
        "owners": [PROPOSER.verify_key.hex, "ee" * 32],
        "retirements": retirements,
        "queries": [],
        "created_at": 1_800_000_000,
        "retired_at": 0,
    }
    fields.update(changes)
    return RemoteModel(**fields)


def test_model_records_count_only_valid_retirements_and_show_budgets() -> None:
    terms = sealed_terms()
    job = _job(terms)
    digest = job.terms_digest
    valid = ModelRetirement("job-sealed", digest).sign(PROPOSER).to_bytes()
    other_terms = ModelRetirement("job-sealed", "99" * 32).sign(SigningKey.generate()).to_bytes()
    other_model = ModelRetirement("job-other", digest).sign(SigningKey.generate()).to_bytes()
    querier = terms.queriers[0].signing_key.hex
    record = _record(
        digest,
        [valid, other_terms, other_model, b"not an envelope"],
        queries=[RemoteModelQueries(querier, 3, 120)],
    )
    view = _view(record, job, {}, PROPOSER.verify_key.hex)
    assert [(o.you, o.retired) for o in view.owners] == [(True, True), (False, False)]
    assert [o.signing_key for o in view.awaiting] == ["ee" * 32]
    (q,) = view.queriers
    assert (q.name, q.total_rows, q.rows_per_day, q.queries, q.rows, q.you) == (
        "bank-b",
        10_000,
        None,
        3,
        120,
        False,
    )
    doc = json.loads(json.dumps(view.to_dict()))
    assert (doc["state"], doc["answer"], doc["digits"]) == ("sealed", "probability", 3)

    # Without the job's terms (the coordinator does not show them): the record alone.
    bare = _view(record, None, {}, "ee" * 32)
    assert bare.queriers == [] and bare.answer is None and bare.owners[1].you


def test_model_records_that_contradict_the_terms_are_refused() -> None:
    job = _job(sealed_terms())
    with pytest.raises(IntegrityError, match="a model's id is its job's id"):
        _view(_record(job.terms_digest, [], job_id="job-x"), job, {}, "")
    with pytest.raises(IntegrityError, match="under terms digest"):
        _view(_record("77" * 32, []), job, {}, "")
    released = _job(sealed_terms(model="release", queriers=[], answer_digits=None))
    with pytest.raises(IntegrityError, match="release the model"):
        _view(_record(released.terms_digest, []), released, {}, "")
