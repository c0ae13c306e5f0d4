"""Proposing: the terms' parameters and every refusal made before anything is proposed."""

from __future__ import annotations

import time
from typing import Any

import pytest

from party_client.cli.propose import _id_columns
from party_client.outputs import file_name
from party_client.proposal import DEFAULT_PARAMS, check_terms, training_params
from protocols.documents import DatasetManifest, JobTerms, Recipient
from protocols.errors import DatasetError, IntegrityError, SetupError
from protocols.keys import HpkePrivateKey, SigningKey
from protocols.objectives import LabelSummary

OWNER = SigningKey.generate()
HPKE = HpkePrivateKey.generate().public_key
BINARY = LabelSummary("y", "binary", 2, True, True, False)
CLASSES = LabelSummary("y", "classes", 4, False, True, False)
AMOUNTS = LabelSummary("y", "continuous", None, False, True, True)


def manifest(dataset_id: str, label: LabelSummary | None, rows: int = 100) -> DatasetManifest:
    return DatasetManifest(
        dataset_id=dataset_id,
        name="",
        owner_key=OWNER.verify_key,
        schema_sha256="0" * 64,
        row_count=rows,
        ciphertext_sha256="1" * 64,
        ciphertext_size=1000,
        wrapped_key=b"k",
        sealed_to_mrenclave="2" * 64,
        sealed_to_hpke_key=HPKE,
        label=label,
    )


def terms(manifests: dict[str, DatasetManifest], **fields: Any) -> JobTerms:
    objective = fields.pop("objective", "binary:logistic")
    labels = [m.label for m in manifests.values() if m.label is not None]
    base: dict[str, Any] = {
        "job_id": "job-1",
        "datasets": [(d, "3" * 64) for d in manifests],
        "join": "horizontal",
        "objective": objective,
        "label": "y",
        "params": training_params(objective, fields.pop("params", {}), labels),
        "num_rounds": 10,
        "seed": 0,
        "allowed_mrenclaves": ["2" * 64],
        "outputs": ["model"],
        "recipients": [Recipient("alice", OWNER.verify_key, HPKE)],
        "expires_at": int(time.time()) + 3600,
        "proposer": OWNER.verify_key.hex,
    }
    return JobTerms(**{**base, **fields})


# --------------------------------------------------------------------------- parameters


def test_each_objective_gets_its_default_metric_unless_one_is_named() -> None:
    assert training_params("binary:logistic", {}, [BINARY])["eval_metric"] == "auc"
    assert training_params("multi:softprob", {}, [CLASSES])["eval_metric"] == "mlogloss"
    assert training_params("reg:squarederror", {}, [AMOUNTS])["eval_metric"] == "rmse"
    assert training_params("reg:squarederror", {"eval_metric": "mae"}, [])["eval_metric"] == "mae"
    params = training_params("binary:logistic", {"max_depth": 6}, [])
    assert params["max_depth"] == 6 and params["tree_method"] == DEFAULT_PARAMS["tree_method"]


def test_num_class_comes_from_the_label_summaries_unless_given() -> None:
    two = LabelSummary("y", "classes", 3, False, True, False)
    assert training_params("multi:softprob", {}, [CLASSES, two])["num_class"] == 4
    assert training_params("multi:softprob", {"num_class": 6}, [CLASSES])["num_class"] == 6
    assert "num_class" not in training_params("binary:logistic", {}, [CLASSES])


def test_an_objective_or_seed_among_the_parameters_is_refused() -> None:
    with pytest.raises(SetupError, match=r"objective=.reg:squarederror. differs.*--objective"):
        training_params("binary:logistic", {"objective": "reg:squarederror"}, [])
    with pytest.raises(SetupError, match="set it with --seed"):
        training_params("binary:logistic", {"seed": 3}, [])
    assert "objective" not in training_params(
        "binary:logistic", {"objective": "binary:logistic"}, []
    )


# --------------------------------------------------------------------------- refusals


def test_the_objective_is_checked_against_every_label_summary() -> None:
    sets = {"a": manifest("a", BINARY), "b": manifest("b", CLASSES)}
    with pytest.raises(DatasetError, match="data set 'b': label column 'y' holds classes values"):
        check_terms(terms(sets), sets)
    check_terms(terms(sets, objective="multi:softprob"), sets)
    check_terms(terms(sets, objective="reg:squarederror"), sets)
    amounts = {"a": manifest("a", AMOUNTS)}
    with pytest.raises(DatasetError, match="holds continuous values, but multi:softprob"):
        check_terms(terms(amounts, objective="multi:softprob"), amounts)
    too_few = {"a": manifest("a", CLASSES)}
    with pytest.raises(DatasetError, match="holds 4 classes, more than num_class = 3"):
        check_terms(terms(too_few, objective="multi:softprob", params={"num_class": 3}), too_few)


def test_a_label_uploaded_under_another_name_is_refused() -> None:
    sets = {"a": manifest("a", BINARY)}
    with pytest.raises(SetupError, match="uploaded with the label column 'y', not 'target'"):
        check_terms(terms(sets, label="target"), sets)


def test_a_vertical_job_needs_exactly_one_data_set_with_the_label() -> None:
    ids = {"id_column": "ID"}
    one = {"a": manifest("a", BINARY), "b": manifest("b", None)}
    check_terms(terms(one, join="vertical", **ids), one)
    none = {"a": manifest("a", None), "b": manifest("b", None)}
    with pytest.raises(SetupError, match="no data set of this vertical job has a label"):
        check_terms(terms(none, join="vertical", **ids), none)
    two = {"a": manifest("a", BINARY), "b": manifest("b", BINARY)}
    with pytest.raises(SetupError, match=r"data sets 'a', 'b' each have a label"):
        check_terms(terms(two, join="vertical", **ids), two)


def test_the_rules_of_the_terms_are_applied_before_proposing() -> None:
    sets = {"a": manifest("a", BINARY), "b": manifest("b", None)}
    with pytest.raises(SetupError, match=r"lacks one for .b..*nothing was proposed"):
        check_terms(terms(sets, join="vertical", id_columns={"a": "ID"}), sets)
    check_terms(terms(sets, join="vertical", id_columns={"a": "ID", "b": "CUST"}), sets)
    vertical = terms(sets, join="vertical", id_column="ID", outputs=["model", "predictions"])
    with pytest.raises(SetupError, match="releases no predictions"):
        check_terms(vertical, sets)
    with pytest.raises(SetupError, match="early_stopping_rounds needs a validation_fraction"):
        check_terms(terms(sets, early_stopping_rounds=5), sets)
    check_terms(terms(sets, early_stopping_rounds=5, validation_fraction=0.2), sets)
    with pytest.raises(SetupError, match="model_format 'onnx'"):
        check_terms(terms(sets, model_format="onnx"), sets)
    with pytest.raises(SetupError, match=r"validation_fraction must be a number from 0 to 0\.5"):
        check_terms(terms(sets, validation_fraction=0.9), sets)


def test_min_rows_is_checked_against_the_row_counts() -> None:
    horizontal = {"a": manifest("a", BINARY, rows=300), "b": manifest("b", BINARY, rows=200)}
    check_terms(terms(horizontal, min_rows=500), horizontal)
    with pytest.raises(SetupError, match="500 rows in all, fewer than --min-rows 501"):
        check_terms(terms(horizontal, min_rows=501), horizontal)
    vertical = {"a": manifest("a", BINARY, rows=300), "b": manifest("b", None, rows=200)}
    with pytest.raises(SetupError, match=r"at most 200 rows \(data set 'b' has 200\)"):
        check_terms(terms(vertical, join="vertical", id_column="ID", min_rows=201), vertical)


# --------------------------------------------------------------------------- the CLI's --id


def test_id_options_name_every_data_set_or_one() -> None:
    import typer

    assert _id_columns(["ID"], ["a", "b"]) == ("ID", {})
    assert _id_columns(["a=ID", "b=CUST"], ["a", "b"]) == (None, {"a": "ID", "b": "CUST"})
    assert _id_columns(["ID", "b=CUST"], ["a", "b"]) == ("ID", {"b": "CUST"})
    with pytest.raises(typer.BadParameter, match="DATASET one of --dataset"):
        _id_columns(["c=ID"], ["a", "b"])
    with pytest.raises(typer.BadParameter, match="both name the id column of every data set"):
        _id_columns(["ID", "KEY"], ["a"])
    with pytest.raises(typer.BadParameter, match="named twice"):
        _id_columns(["a=ID", "a=KEY"], ["a"])


# --------------------------------------------------------------------------- result files


def test_outputs_are_written_to_files_named_by_kind() -> None:
    sets = {"a": manifest("a", BINARY), "b": manifest("b", BINARY)}
    every = ["model", "metrics", "importance", "predictions"]
    json_terms = terms(sets, outputs=every)
    assert file_name(json_terms, "model") == "model.json"
    assert file_name(terms(sets, outputs=every, model_format="ubj"), "model") == "model.ubj"
    assert file_name(json_terms, "metrics") == "metrics.json"
    assert file_name(json_terms, "importance") == "importance.json"
    assert file_name(json_terms, "predictions.a") == "predictions.a.csv"
    for unreleased in ("predictions.c", "predictions.", "../model", "weights"):
        with pytest.raises(IntegrityError, match="which the terms do not release"):
            file_name(json_terms, unreleased)
    with pytest.raises(IntegrityError):
        file_name(terms(sets, outputs=["model"]), "metrics")
