"""The job engine through a real worker: joins, objectives, categories, validation, release.

Every job runs in a real enclave worker (the enclave process as `detente libos
run` starts it, each job in its own process), driven with the coordinator's
RA-TLS client. For every deterministic job the released model predicts
exactly what XGBoost trained in the clear on the same joined rows predicts,
the joined rows built by protocols.training's rules (worker_testkit.plaintext_training).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import xgboost as xgb
from worker_testkit import (
    Job,
    Owner,
    Worker,
    build_worker_instance,
    collect,
    open_outputs,
    plaintext_training,
    run_job,
    seal_job,
)

from coordinator.enclave_client import EnclaveCallError
from protocols import training

CANARY = "CANARY-5e1f"
CITIES = ["Basel", "Bern", "Genève", "Lugano", "Zürich"]
MULTI = {"tree_method": "hist", "max_depth": 3, "nthread": 1, "num_class": 3}


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(*build_worker_instance(tmp_path_factory.mktemp("worker") / "instance")).start()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def enclave(worker: Worker) -> tuple[Any, str, Any]:
    _der, verified = worker.client().verify()
    return verified.identity.hpke_key, verified.mrenclave, verified.identity.signing_key


def customers(rows: int, seed: int, objective: str, cities: list[str] = CITIES) -> pa.Table:
    """Customers with an id, three numbers, a city (text) and a label for ``objective``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    x[rng.random((rows, 3)) < 0.05] = np.nan  # missing values stay missing
    city = rng.choice(cities, rows)
    effect = np.array([0.3 * (cities.index(c) % 4) for c in city])
    score = np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) + effect
    score += rng.normal(scale=0.3, size=rows)
    if objective.startswith("binary:"):
        label: Any = (score > 0.4).astype(np.int64)
    elif objective.startswith("multi:"):
        label = np.digitize(score, [0.0, 0.8]).astype(np.int64)
    else:
        label = score
    return pa.table(
        {
            "id": rng.permutation(rows * 3)[:rows] + seed * 100_000,
            "x0": x[:, 0],
            "x1": x[:, 1].astype(np.float32),
            "city": pa.array(city, pa.string()),
            "x2": x[:, 2],
            "label": label,
        }
    )


def _run(worker: Worker, job: Job) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    return collect(run_job(worker, job))


def _same_predictions(model: Any, plain: Any, features: pa.Table) -> None:
    probe = xgb.DMatrix(features, enable_categorical=True)
    assert np.array_equal(model.predict(probe), plain.predict(probe))


def _model(data: bytes) -> Any:
    booster = xgb.Booster()
    booster.load_model(bytearray(data))
    return booster


def _horizontal(enclave: Any, job_id: str, objective: str, **fields: Any) -> Job:
    """Two banks with the same columns; only the second has customers in Chur."""
    a, b = Owner("a"), Owner("b")
    return seal_job(
        enclave[0],
        enclave[1],
        job_id,
        [
            (a, f"{job_id}-a", customers(400, 1, objective)),
            (b, f"{job_id}-b", customers(250, 2, objective, [*CITIES, "Chur"])),
        ],
        objective=objective,
        id_column="id",
        **fields,
    )


def _vertical(enclave: Any, job_id: str, objective: str, **fields: Any) -> Job:
    """A bank (ids, x0, the label), a shop (text ids, x1, city), an insurer (ids, x2):
    the same customers in different orders, each missing some of them."""
    whole = customers(500, 3, objective)
    rng = np.random.default_rng(7)

    def part(columns: list[str], drop: float) -> pa.Table:
        rows = rng.permutation(whole.num_rows)[: int(whole.num_rows * (1 - drop))]
        return whole.select(columns).take(pa.array(rows))

    shop = part(["id", "x1", "city"], 0.1)
    shop = shop.set_column(0, "customer", pc_string(shop.column("id")))
    bank, insurer = Owner("bank"), Owner("insurer")
    return seal_job(
        enclave[0],
        enclave[1],
        job_id,
        [
            (bank, f"{job_id}-bank", part(["id", "x0", "label"], 0.1)),
            (Owner("shop"), f"{job_id}-shop", shop),
            (insurer, f"{job_id}-insurer", part(["x2", "id"], 0.05)),
        ],
        join="vertical",
        objective=objective,
        id_columns={
            f"{job_id}-bank": "id",
            f"{job_id}-shop": "customer",
            f"{job_id}-insurer": "id",
        },
        recipients=[bank, insurer],
        **fields,
    )


def pc_string(column: Any) -> Any:
    import pyarrow.compute as pc

    return pc.cast(column, pa.string())


PARAMS = {"tree_method": "hist", "max_depth": 3, "nthread": 1}
OBJECTIVES = [
    ("binary:logistic", PARAMS),
    ("multi:softprob", MULTI),
    ("reg:squarederror", PARAMS),
]


@pytest.mark.parametrize("join", ["horizontal", "vertical"])
@pytest.mark.parametrize(("objective", "params"), OBJECTIVES)
def test_a_job_trains_the_plaintext_model(worker, enclave, join, objective, params):
    make = _horizontal if join == "horizontal" else _vertical
    job = make(
        enclave,
        f"job-{join[0]}-{objective.split(':')[0]}",
        objective,
        params=params,
        outputs=["model", "metrics", "importance"],
    )
    outputs, progress = _run(worker, job)
    statement, mine = open_outputs(job, outputs, enclave[2], job.owners[0])
    plain, features, labels, names, _ = plaintext_training(job)
    model = _model(mine["model"])
    _same_predictions(model, plain, features)
    assert [o.name for o in statement.outputs] == ["model", "metrics", "importance"]

    metrics = json.loads(mine["metrics"])
    assert metrics["objective"] == objective and metrics["features"] == names
    assert metrics["rows"] == features.num_rows and metrics["validation_rows"] == 0
    assert metrics["evaluated_rounds"] == [5]  # no stride: once, after the last round
    metric = {"binary": "logloss", "multi": "mlogloss", "reg": "rmse"}[objective.split(":")[0]]
    rows = xgb.DMatrix(features, label=labels, enable_categorical=True)
    final = plain.eval_set([(rows, "train")], 4)
    assert metrics["curves"]["train"][metric] == [float(final.split(":")[-1])]
    assert metrics["best_iteration"] is None and metrics["best_score"] is None
    importance = json.loads(mine["importance"])
    assert importance == plain.get_score(importance_type="gain")

    # Each data set's intake is reported while it arrives: its bytes and rows.
    intake = [text for kind, text in progress if kind == "intake"]
    for (dataset_id, _), table in zip(job.terms.datasets, job.tables, strict=True):
        assert any(
            text.startswith(f"data set {dataset_id!r}: received ")
            and f"{table.num_rows} rows" in text
            for text in intake
        ), intake
    if join == "vertical":
        # The intersection's size is released in the metrics, and nowhere else.
        assert metrics["joined_rows"] == features.num_rows
        assert "rows" not in statement.summary
        assert not any(f"{features.num_rows} rows" in text for _, text in progress)
    else:
        assert "joined_rows" not in metrics and statement.summary["rows"] == features.num_rows


def test_categories_are_agreed_across_parties_and_recorded_with_the_model(worker, enclave):
    job = _horizontal(enclave, "job-cats", "binary:logistic", params=PARAMS)
    outputs, _ = _run(worker, job)
    _, mine = open_outputs(job, outputs, enclave[2], job.owners[0])
    model = _model(mine["model"])
    recorded = dict(model.get_categories(export_to_arrow=True).to_arrow())
    # Every city of either bank, sorted by UTF-8 bytes: Chur is the second bank's alone.
    assert recorded["city"].to_pylist() == training.category_order([*CITIES, "Chur"])
    categories = {"city": recorded["city"].to_pylist()}
    names = [n for n in job.tables[0].column_names if n not in ("id", "label")]
    rows = job.tables[0].slice(0, 50)
    # The model maps categories by value; a city it never saw is a missing value.
    unseen = rows.set_column(3, "city", pa.array(["Atlantis"] * 50))
    missing = rows.set_column(3, "city", pa.array([None] * 50, pa.string()))

    def predict(table: pa.Table) -> Any:
        return model.predict(
            xgb.DMatrix(
                training.prediction_table(table, categories, names), enable_categorical=True
            )
        )

    assert np.array_equal(predict(unseen), predict(missing))
    assert not np.array_equal(predict(rows), predict(missing))
    backwards = training.categorize(rows.select(names), {"city": categories["city"][::-1]})
    assert np.array_equal(
        model.predict(xgb.DMatrix(backwards, enable_categorical=True)), predict(rows)
    )


def test_early_stopping_reports_the_best_iteration_on_the_validation_curve(worker, enclave):
    job = _horizontal(
        enclave,
        "job-early",
        "binary:logistic",
        params={"tree_method": "hist", "max_depth": 6, "eta": 0.6, "nthread": 1},
        num_rounds=200,
        validation_fraction=0.3,
        early_stopping_rounds=3,
        outputs=["model", "metrics"],
    )
    outputs, _ = _run(worker, job)
    statement, mine = open_outputs(job, outputs, enclave[2], job.owners[0])
    plain, features, labels, _, history = plaintext_training(job)
    model = _model(mine["model"])
    _same_predictions(model, plain, features)
    trained = plain.num_boosted_rounds()
    assert trained < 200 and model.num_boosted_rounds() == trained
    metrics = json.loads(mine["metrics"])
    assert metrics["best_iteration"] == plain.best_iteration
    assert metrics["best_score"] == plain.best_score
    assert metrics["curves"] == {"validation": history["validation"]}
    assert metrics["evaluated_rounds"] == list(range(1, trained + 1))
    _, valid = training.validation_split(labels, 0.3, 0, stratify=True)
    assert metrics["validation_rows"] == len(valid)
    assert metrics["rows"] == features.num_rows - len(valid)
    assert statement.summary["rounds"] == trained


def test_metrics_are_evaluated_at_the_terms_stride(worker, enclave):
    job = _horizontal(
        enclave,
        "job-stride",
        "reg:squarederror",
        params=PARAMS,
        num_rounds=5,
        metrics_every=2,
        outputs=["model", "metrics"],
    )
    outputs, _ = _run(worker, job)
    _, mine = open_outputs(job, outputs, enclave[2], job.owners[0])
    plain, features, labels, _, _ = plaintext_training(job)
    _same_predictions(_model(mine["model"]), plain, features)
    # XGBoost's own evaluation of the training rows every round, in the clear.
    history: dict[str, Any] = {}
    xgb.train(
        job.terms.train_params(),
        xgb.DMatrix(features, label=labels, enable_categorical=True),
        5,
        evals=[(xgb.DMatrix(features, label=labels, enable_categorical=True), "train")],
        evals_result=history,
        verbose_eval=False,
    )
    metrics = json.loads(mine["metrics"])
    assert metrics["evaluated_rounds"] == [2, 4, 5]
    every = history["train"]["rmse"]
    assert metrics["curves"] == {"train": {"rmse": [every[1], every[3], every[4]]}}


def test_outputs_go_to_exactly_their_recipients_and_predictions_to_their_own_owner(worker, enclave):
    a, b, c = Owner("a"), Owner("b"), Owner("c")
    tables = [customers(120, n, "multi:softprob") for n in (4, 5, 6)]
    tables[0] = tables[0].drop_columns(["id"])  # no id column: rows are numbered
    tables[1] = tables[1].rename_columns(["customer", *tables[1].column_names[1:]])
    job = seal_job(
        enclave[0],
        enclave[1],
        "job-release",
        [(a, "rel-a", tables[0]), (b, "rel-b", tables[1]), (c, "rel-c", tables[2])],
        objective="multi:softprob",
        params=MULTI,
        outputs=["model", "metrics", "importance", "predictions"],
        recipients=[a, b],  # c owns data but receives nothing
        id_columns={"rel-b": "customer", "rel-c": "id"},
        model_format="ubj",
    )
    outputs, _ = _run(worker, job)
    plain, features, _, _, _ = plaintext_training(job)
    expected = plain.predict(xgb.DMatrix(features, enable_categorical=True))
    statement, as_a = open_outputs(job, outputs, enclave[2], a)
    _, as_b = open_outputs(job, outputs, enclave[2], b)
    _, as_c = open_outputs(job, outputs, enclave[2], c)
    wrapped = {o.name: set(o.wrapped_keys) for o in statement.outputs}
    both = {a.signing.verify_key.hex, b.signing.verify_key.hex}
    assert wrapped == {
        "model": both,
        "metrics": both,
        "importance": both,
        "predictions.rel-a": {a.signing.verify_key.hex},
        "predictions.rel-b": {b.signing.verify_key.hex},
    }
    assert set(outputs) == {*wrapped, "statement"}  # nothing released that is not stated
    assert as_c == {}
    assert set(as_a) == {"model", "metrics", "importance", "predictions.rel-a"}
    assert set(as_b) == {"model", "metrics", "importance", "predictions.rel-b"}
    assert as_a["model"] == as_b["model"]
    with pytest.raises(ValueError):  # UBJSON, as the terms ask, not JSON
        json.loads(as_a["model"])
    _same_predictions(_model(as_a["model"]), plain, features)

    mine = pacsv.read_csv(pa.py_buffer(as_a["predictions.rel-a"]))
    assert mine.column_names == ["row", "prediction_0", "prediction_1", "prediction_2"]
    assert mine.column("row").to_pylist() == list(range(1, 121))
    theirs = pacsv.read_csv(pa.py_buffer(as_b["predictions.rel-b"]))
    assert theirs.column_names[0] == "customer"
    assert theirs.column("customer").to_pylist() == tables[1].column("customer").to_pylist()
    for table, start in ((mine, 0), (theirs, 120)):
        got = np.column_stack([table.column(f"prediction_{k}").to_numpy() for k in range(3)])
        assert np.array_equal(got.astype(np.float32), expected[start : start + 120])


def _failure(worker: Worker, job: Job) -> str:
    with pytest.raises(EnclaveCallError) as failure:
        _run(worker, job)
    assert failure.value.code == "FAILED_PRECONDITION", failure.value.details
    assert CANARY not in failure.value.details
    return failure.value.details


def _canary_table(**columns: Any) -> pa.Table:
    return pa.table(columns)


VERTICAL_ERRORS = [
    (  # the label in no data set
        {"a": {"id": [1, 2], "city": [CANARY, "x"]}, "b": {"id": [1, 2], "x": [1.0, 2.0]}},
        "no data set holds the label column 'label'",
    ),
    (  # the label in two
        {"a": {"id": [1, 2], "label": [0, 1]}, "b": {"id": [1, 2], "label": [1, 0]}},
        "the label column 'label' is in more than one data set ('job-err-a', 'job-err-b')",
    ),
    (  # an id column missing
        {"a": {"id": [1, 2], "label": [0, 1]}, "b": {"key": [CANARY, "2"], "x": [1.0, 2.0]}},
        "data set 'job-err-b' has no id column 'id'",
    ),
    (  # duplicate ids
        {"a": {"id": [1, 2], "label": [0, 1]}, "b": {"id": [CANARY, CANARY], "x": [1.0, 2.0]}},
        "data set 'job-err-b' id column 'id' has 1 repeated ids",
    ),
    (  # a feature in two data sets
        {
            "a": {"id": [1, 2], "x": [1.0, 2.0], "label": [0, 1]},
            "b": {"id": [1, 2], "x": [3.0, 4.0]},
        },
        "the feature column 'x' is in data sets 'job-err-a' and 'job-err-b'",
    ),
]


@pytest.mark.parametrize(("tables", "message"), VERTICAL_ERRORS)
def test_vertical_join_errors_name_the_data_set_and_column(worker, enclave, tables, message):
    parts = [
        (Owner(name), f"job-err-{name}", _canary_table(**columns))
        for name, columns in tables.items()
    ]
    job = seal_job(
        enclave[0],
        enclave[1],
        "job-err",
        parts,
        join="vertical",
        id_columns={d: "id" for _, d, _ in parts},
    )
    assert message in _failure(worker, job)


def test_a_join_smaller_than_min_rows_fails_without_saying_its_size(worker, enclave):
    ids = [f"{CANARY}-{i}" for i in range(40)]
    bank = pa.table({"id": ids, "x": np.arange(40.0), "label": [i % 2 for i in range(40)]})
    shop = pa.table({"id": ids[:17] + [f"other-{i}" for i in range(23)], "city": ["u"] * 40})
    job = seal_job(
        enclave[0],
        enclave[1],
        "job-small",
        [(Owner("bank"), "small-bank", bank), (Owner("shop"), "small-shop", shop)],
        join="vertical",
        id_columns={"small-bank": "id", "small-shop": "id"},
        min_rows=30,
    )
    details = _failure(worker, job)
    assert "fewer rows than the terms' min_rows = 30" in details
    assert "17" not in details


def test_a_horizontal_job_names_the_first_differing_column(worker, enclave):
    first = pa.table({"id": [1, 2], "x": [1.0, 2.0], "city": [CANARY, "u"], "label": [0, 1]})
    other = pa.table({"id": [3, 4], "x": [1.0, 2.0], "town": [CANARY, "v"], "label": [1, 0]})
    job = seal_job(
        enclave[0],
        enclave[1],
        "job-schema",
        [(Owner("a"), "schema-a", first), (Owner("b"), "schema-b", other)],
        id_column="id",
    )
    details = _failure(worker, job)
    assert "data set 'schema-b' has column 'town' where the first data set has 'city'" in details


def test_labels_are_checked_per_data_set_against_the_objective(worker, enclave):
    good = pa.table({"id": [1, 2, 3], "x": [1.0, 2.0, 3.0], "label": [0, 1, 2]})
    more = pa.table({"id": [4, 5, 6], "x": [1.0, 2.0, 3.0], "label": [0, 3, 4]})
    job = seal_job(
        enclave[0],
        enclave[1],
        "job-classes",
        [(Owner("a"), "classes-a", good), (Owner("b"), "classes-b", more)],
        objective="multi:softmax",
        params={"num_class": 3},
        id_column="id",
    )
    details = _failure(worker, job)
    assert (
        "data set 'classes-b': label column 'label' holds 5 classes, more than num_class = 3"
        in (details)
    )
