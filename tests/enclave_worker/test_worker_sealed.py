"""Sealed models through a real worker: kept, never released, queried within budgets.

Every job and query runs in a real enclave worker (the enclave process as
`detente libos run` starts it), queries sealed by query_testkit exactly as
protocols/SPEC.md §3.8 says and sent over the worker's Predict stream. Each
answer is checked against XGBoost trained in the clear on the same rows with
the same parameters (worker_testkit.plaintext_training), predicting the same
query rows mapped by protocols.training.prediction_table.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import xgboost as xgb
from query_testkit import (
    Enclave,
    enclave_of,
    querier,
    query,
    refused,
    seal_query,
)
from worker_testkit import (
    Job,
    Owner,
    Worker,
    build_worker_instance,
    collect,
    make_job,
    open_outputs,
    plaintext_training,
    run_job,
    seal_job,
)

from coordinator.enclave_client import EnclaveCallError, EnclaveProgress
from protocols import training
from protocols.documents import Budget, ResultStatement
from protocols.statements import Envelope

CITIES = ["Basel", "Bern", "Genève", "Lugano", "Zürich"]
PARAMS = {"tree_method": "hist", "max_depth": 3, "nthread": 1}


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(*build_worker_instance(tmp_path_factory.mktemp("worker") / "instance")).start()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def enclave(worker: Worker) -> Enclave:
    return enclave_of(worker)


def customers(rows: int, seed: int, objective: str, cities: list[str] = CITIES) -> pa.Table:
    """Customers with an id, three numbers (some missing), a city (text) and a label."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    x[rng.random((rows, 3)) < 0.05] = np.nan
    city = rng.choice(cities, rows)
    effect = np.array([0.3 * (cities.index(c) % 4) for c in city])
    score = np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) + effect
    score += rng.normal(scale=0.3, size=rows)
    if objective.startswith("multi:"):
        label: Any = np.digitize(score, [0.0, 0.8]).astype(np.int64)
    elif objective.startswith("binary:"):
        label = (score > 0.4).astype(np.int64)
    else:
        label = score
    return pa.table(
        {
            "id": np.arange(rows) + seed * 100_000,
            "x0": x[:, 0],
            "x1": x[:, 1].astype(np.float32),
            "city": pa.array(city, pa.string()),
            "x2": x[:, 2],
            "label": label,
        }
    )


@dataclass
class Parties:
    a: Owner  # data owner, querier with a large budget
    b: Owner  # data owner, no querier
    small: Owner  # querier only: 100 rows in all
    daily: Owner  # querier only: 1000 rows, 300 a day


@pytest.fixture(scope="module")
def parties() -> Parties:
    return Parties(Owner("a"), Owner("b"), Owner("small"), Owner("daily"))


def sealed_job(
    enclave: Enclave,
    parties: Parties,
    job_id: str,
    objective: str = "binary:logistic",
    **fields: Any,
) -> Job:
    """Two banks' customers (only the second has customers in Chur), the model sealed."""
    fields.setdefault(
        "queriers",
        [
            querier(parties.a, 100_000),
            querier(parties.small, 100),
            querier(parties.daily, 1000, 300),
        ],
    )
    return seal_job(
        enclave.hpke_key,
        enclave.mrenclave,
        job_id,
        [
            (parties.a, f"{job_id}-a", customers(400, 1, objective)),
            (parties.b, f"{job_id}-b", customers(250, 2, objective, [*CITIES, "Chur"])),
        ],
        objective=objective,
        id_column="id",
        outputs=["metrics"],
        model="sealed",
        **fields,
    )


@dataclass
class Trained:
    job: Job
    statement: ResultStatement
    outputs: dict[str, bytes]
    plain: Any  # the booster trained in the clear
    names: list[str]
    categories: dict[str, list[str]]

    def expected(self, table: pa.Table) -> Any:
        rows = training.prediction_table(table, self.categories, self.names)
        return self.plain.predict(xgb.DMatrix(rows, enable_categorical=True))


def train(worker: Worker, enclave: Enclave, job: Job) -> Trained:
    outputs, _ = collect(run_job(worker, job))
    statement = ResultStatement.verify(
        Envelope.from_bytes(outputs["statement"]), enclave.signing_key
    )
    plain, features, _, names, _ = plaintext_training(job)
    categories = {
        n: features.column(n).chunk(0).dictionary.to_pylist()
        for n in names
        if pa.types.is_dictionary(features.schema.field(n).type)
    }
    return Trained(job, statement, outputs, plain, names, categories)


@pytest.fixture(scope="module")
def binary(worker: Worker, enclave: Enclave, parties: Parties) -> Trained:
    return train(worker, enclave, sealed_job(enclave, parties, "sealed-bin"))


def rows_of(trained: Trained, start: int, count: int, seed: int = 0) -> pa.Table:
    """Query rows: owner b's customers without id and label, columns shuffled, some cities
    the model never saw and some missing."""
    table = trained.job.tables[1].slice(start, count).drop_columns(["id", "label"])
    city = table.column("city").to_pylist()
    for k in range(0, len(city), 7):
        city[k] = "Atlantis"
    for k in range(3, len(city), 11):
        city[k] = None
    table = table.set_column(table.column_names.index("city"), "city", pa.array(city, pa.string()))
    order = np.random.default_rng(seed).permutation(table.num_columns)
    return table.select([table.column_names[k] for k in order])


def test_a_sealed_job_releases_no_model_and_its_statement_names_it(binary, enclave, parties):
    job, statement = binary.job, binary.statement
    assert statement.sealed_model == job.terms.job_id
    assert statement.terms_digest == job.envelope.digest
    assert [o.name for o in statement.outputs] == ["metrics"]
    assert set(binary.outputs) == {"metrics", "statement"}  # no model bytes on the wire
    _, mine = open_outputs(job, binary.outputs, enclave.signing_key, parties.a)
    assert set(mine) == {"metrics"}


def test_a_querier_gets_the_plaintext_models_predictions_with_categories(
    worker, binary, enclave, parties
):
    table = rows_of(binary, 0, 120)
    answer, predictions = query(worker, enclave, parties.a, "sealed-bin", table)
    assert answer.columns == ["prediction"]
    expected = binary.expected(table)
    assert np.array_equal(predictions.column("prediction").to_numpy(), expected)
    # Unseen cities are missing values, as in the clear: the answer is not the same as for
    # the rows with their true cities.
    true_cities = binary.job.tables[1].slice(0, 120).drop_columns(["id", "label"])
    assert not np.array_equal(binary.expected(true_cities), expected)
    assert answer.remaining == Budget(100_000 - 120, None)
    # The second query of the model is answered from memory: one load for both.
    answer, predictions = query(worker, enclave, parties.a, "sealed-bin", rows_of(binary, 120, 5))
    assert np.array_equal(
        predictions.column("prediction").to_numpy(), binary.expected(rows_of(binary, 120, 5))
    )
    assert answer.remaining == Budget(100_000 - 125, None)
    log = (worker.instance / "logs" / "worker.log").read_text()
    assert log.count("model sealed-bin loaded into the cache") == 1


def test_class_answers_are_the_plaintext_models_most_probable_class(worker, enclave, parties):
    job = sealed_job(
        enclave,
        parties,
        "sealed-multi",
        "multi:softprob",
        params={**PARAMS, "num_class": 3},
        answer="class",
    )
    trained = train(worker, enclave, job)
    table = rows_of(trained, 10, 80, seed=1)
    answer, predictions = query(worker, enclave, parties.a, "sealed-multi", table)
    assert answer.columns == ["class"]
    probabilities = trained.expected(table)
    assert probabilities.shape == (80, 3)
    assert predictions.column("class").to_pylist() == np.argmax(probabilities, axis=1).tolist()


def test_rounded_answers_are_the_plaintext_probabilities_rounded(worker, enclave, parties):
    trained = train(worker, enclave, sealed_job(enclave, parties, "sealed-round", answer_digits=2))
    table = rows_of(trained, 0, 60, seed=2)
    _, predictions = query(worker, enclave, parties.a, "sealed-round", table)
    values = predictions.column("prediction").to_numpy()
    assert np.array_equal(values, np.round(trained.expected(table).astype(np.float64), 2))
    assert np.array_equal(values, np.round(values, 2))
    assert len(set(values.tolist())) > 1


def test_a_party_the_terms_do_not_name_is_refused(worker, binary, enclave, parties):
    # b owns data of the job but is no querier: owning data gives no right to query.
    refusal = refused(worker, seal_query(enclave, parties.b, "sealed-bin", rows_of(binary, 0, 5)))
    assert refusal.code == "PERMISSION_DENIED"
    assert "is not a querier of model 'sealed-bin'" in refusal.details
    refusal = refused(worker, seal_query(enclave, parties.a, "no-such", rows_of(binary, 0, 5)))
    assert refusal.code == "NOT_FOUND" and "no sealed model 'no-such'" in refusal.details


def test_the_total_budget_is_enforced_naming_what_is_left(worker, binary, enclave, parties):
    answer, _ = query(worker, enclave, parties.small, "sealed-bin", rows_of(binary, 0, 60))
    assert answer.remaining == Budget(40, None)
    refusal = refused(
        worker, seal_query(enclave, parties.small, "sealed-bin", rows_of(binary, 0, 41))
    )
    assert refusal.code == "RESOURCE_EXHAUSTED"
    assert "asks model 'sealed-bin' for 41 rows but has 40 rows in all left" in refusal.details
    # The refused query charged nothing: exactly the 40 rows left can still be scored.
    answer, predictions = query(
        worker, enclave, parties.small, "sealed-bin", rows_of(binary, 0, 40)
    )
    assert answer.remaining == Budget(0, None) and predictions.num_rows == 40
    refusal = refused(
        worker, seal_query(enclave, parties.small, "sealed-bin", rows_of(binary, 0, 1))
    )
    assert refusal.code == "RESOURCE_EXHAUSTED" and "has 0 rows in all left" in refusal.details


def test_the_daily_budget_is_enforced_naming_what_is_left_today(worker, binary, enclave, parties):
    answer, _ = query(worker, enclave, parties.daily, "sealed-bin", rows_of(binary, 0, 250))
    assert answer.remaining == Budget(750, 50)
    refusal = refused(
        worker, seal_query(enclave, parties.daily, "sealed-bin", rows_of(binary, 0, 51))
    )
    assert refusal.code == "RESOURCE_EXHAUSTED"
    assert "has 750 rows in all, 50 today left (over its budget today)" in refusal.details
    assert "wait for the next UTC day" in refusal.details
    answer, _ = query(worker, enclave, parties.daily, "sealed-bin", rows_of(binary, 0, 50))
    assert answer.remaining == Budget(700, 0)


def test_a_query_is_answered_while_a_job_trains(worker, binary, enclave, parties):
    long = make_job(
        enclave.hpke_key,
        enclave.mrenclave,
        "job-long",
        rows=20_000,
        features=10,
        rounds=2000,
        params={"tree_method": "hist", "max_depth": 6, "nthread": 1},
    )
    cancel: list[Any] = []
    messages = worker.client().run_job(long.spec, long.datasets(), cancel.append)
    for message in messages:
        if isinstance(message, EnclaveProgress) and message.kind == "round":
            break
    assert worker.job_processes(), "the long job is not training"
    started = time.monotonic()
    table = rows_of(binary, 0, 20)
    _, predictions = query(worker, enclave, parties.a, "sealed-bin", table)
    assert np.array_equal(predictions.column("prediction").to_numpy(), binary.expected(table))
    assert worker.job_processes(), "the job finished before the query: the test proves nothing"
    assert time.monotonic() - started < 30
    cancel[0]()
    with pytest.raises(EnclaveCallError):
        list(messages)


def _without_mounts(instance: Path) -> None:
    """No [[mounts]] at all (as a backend without a monotonic counter leaves the worker)."""
    config = instance / "libos.toml"
    text = config.read_text()
    config.write_text("mounts = []\n" + text[: text.index("[[mounts]]")])


def test_an_enclave_without_a_rollback_protected_mount_refuses_sealed_terms(
    tmp_path: Path, parties: Parties
) -> None:
    instance = tmp_path / "instance"
    from libos import image

    image.init(instance)
    _without_mounts(instance)
    bare = Worker(instance, image.build(instance)).start()
    try:
        enclave = enclave_of(bare)
        job = sealed_job(enclave, parties, "sealed-nowhere")
        with pytest.raises(EnclaveCallError) as failure:
            list(run_job(bare, job))
        assert failure.value.code == "FAILED_PRECONDITION"
        assert "has no rollback-protected encrypted mount to keep sealed models in" in (
            failure.value.details
        )
        # Refused at accept: no job process ever started, no data was read.
        log = (instance / "logs" / "worker.log").read_text()
        assert "runs in process" not in log
        table = customers(5, 9, "binary:logistic").drop_columns(["id", "label"])
        refusal = refused(bare, seal_query(enclave, parties.a, "sealed-nowhere", table))
        assert refusal.code == "FAILED_PRECONDITION"
        assert "answers no query" in refusal.details
    finally:
        bare.stop()
