"""Sealed-model documents: terms that seal a model, queries, answers and retirements."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest

from protocols import hpke
from protocols.documents import (
    Budget,
    JobTerms,
    ModelRetirement,
    PredictionAnswer,
    PredictionQuery,
    Querier,
    Recipient,
    ResultStatement,
)
from protocols.errors import FormatError, IntegrityError, SignatureError
from protocols.keys import HpkePrivateKey, SigningKey


def terms_for(proposer: SigningKey) -> JobTerms:
    recipient = Recipient("bank-a", proposer.verify_key, HpkePrivateKey.generate().public_key)
    return JobTerms(
        job_id="job-1",
        datasets=[("ds-1", "11" * 32), ("ds-2", "22" * 32)],
        join="horizontal",
        objective="binary:logistic",
        label="fraud",
        params={"max_depth": 4},
        num_rounds=10,
        seed=7,
        allowed_mrenclaves=["ef" * 32],
        outputs=["model", "metrics"],
        recipients=[recipient],
        expires_at=1_800_000_000,
        proposer=proposer.verify_key.hex,
    )


def sealed_terms(proposer: SigningKey, **changes: Any) -> JobTerms:
    querier = Querier(
        "bank-b",
        SigningKey.generate().verify_key,
        HpkePrivateKey.generate().public_key,
        10_000,
        1_000,
    )
    fields: dict[str, Any] = {
        "outputs": ["metrics"],
        "model": "sealed",
        "queriers": [querier],
        "answer": "probability",
        "answer_digits": 3,
    }
    fields.update(changes)
    return replace(terms_for(proposer), **fields)


def test_sealed_terms_round_trip_and_released_terms_keep_their_bytes() -> None:
    key = SigningKey.generate()
    terms = sealed_terms(key)
    again = JobTerms.verify(terms.sign(key))
    assert again == terms and again.sealed
    assert again.querier(terms.queriers[0].signing_key) == terms.queriers[0]
    assert again.querier(key.verify_key) is None
    released = terms_for(key)
    # No model section at all when the model is released: digests of existing terms hold.
    assert "model" not in released.to_dict()
    assert not JobTerms.verify(released.sign(key)).sealed


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"outputs": ["model", "metrics"]}, "seal the model and also release it"),
        ({"queriers": []}, "name no party that may query it"),
        (
            {"answer": "class", "answer_digits": None, "objective": "reg:squarederror"},
            "need a classification objective",
        ),
        ({"model": "release"}, "release the model give no other model fields"),
    ],
)
def test_sealed_terms_that_cannot_hold_are_refused(changes: dict[str, Any], message: str) -> None:
    key = SigningKey.generate()
    terms = sealed_terms(key, **changes)
    with pytest.raises(FormatError, match=message):
        JobTerms.from_dict(terms.to_dict())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(disposition="kept"), "model.disposition 'kept' is not one of"),
        (lambda m: m.update(answer="score"), "model.answer 'score' is not one of"),
        (lambda m: m.update(digits=16), "model.digits must be null or an integer from 0 to 15"),
        (lambda m: m.update(answer="class"), "class answers take none"),
        (lambda m: m["queriers"][0].update(total_rows=0), "total_rows must be a positive"),
        (lambda m: m["queriers"][0].update(rows_per_day=20_000), "rows_per_day must be null"),
        (
            lambda m: m["queriers"].append(dict(m["queriers"][0])),
            r"a querier \(name or key\) twice",
        ),
    ],
)
def test_malformed_model_sections_are_refused(edit: Any, message: str) -> None:
    doc = sealed_terms(SigningKey.generate()).to_dict()
    edit(doc["model"])
    with pytest.raises(FormatError, match=message):
        JobTerms.from_dict(doc)


def test_released_terms_may_not_carry_model_fields() -> None:
    doc = terms_for(SigningKey.generate()).to_dict()
    doc["model"] = {"disposition": "release", "answer": "class"}
    with pytest.raises(FormatError, match="release the model give no other model fields"):
        JobTerms.from_dict(doc)


def test_result_statement_names_the_sealed_model_only_when_there_is_one() -> None:
    statement = ResultStatement("job-1", "aa" * 32, "bb" * 32, [], {"rounds": 3})
    assert "sealed_model" not in statement.to_dict()
    sealed = replace(statement, sealed_model="job-1")
    assert ResultStatement.from_dict(sealed.to_dict()) == sealed


def _query(enclave: HpkePrivateKey) -> PredictionQuery:
    return PredictionQuery(
        model_id="job-1",
        query_id="q-" + os.urandom(8).hex(),
        issued_at=1_800_000_000,
        rows=100,
        ciphertext_sha256="cc" * 32,
        wrapped_key=hpke.wrap_key(os.urandom(32), enclave.public_key, b"x"),
        sealed_to_mrenclave="ef" * 32,
        sealed_to_hpke_key=enclave.public_key,
    )


def test_query_answer_and_retirement_round_trip_under_their_signers() -> None:
    querier, enclave = SigningKey.generate(), SigningKey.generate()
    query = _query(HpkePrivateKey.generate())
    envelope = query.sign(querier)
    assert PredictionQuery.verify(envelope) == query
    answer = PredictionAnswer(
        "job-1",
        query.query_id,
        envelope.digest,
        100,
        ["prediction"],
        "dd" * 32,
        os.urandom(80),
        Budget(9_900, 900),
    )
    assert PredictionAnswer.verify(answer.sign(enclave), enclave.verify_key) == answer
    with pytest.raises(SignatureError, match="not the attested enclave key"):
        PredictionAnswer.verify(answer.sign(querier), enclave.verify_key)
    retirement = ModelRetirement("job-1", "aa" * 32)
    assert ModelRetirement.verify(retirement.sign(querier)) == retirement
    assert Budget(5, None).describe() == "5 rows in all"


def test_a_query_too_large_or_empty_is_refused() -> None:
    doc = _query(HpkePrivateKey.generate()).to_dict()
    for rows, message in ((0, "rows must be an integer ≥ 1"), (2_000_000, "split the file")):
        with pytest.raises(FormatError, match=message):
            PredictionQuery.from_dict({**doc, "rows": rows})


def test_an_altered_query_does_not_verify() -> None:
    envelope = _query(HpkePrivateKey.generate()).sign(SigningKey.generate())
    forged = replace(envelope, payload=envelope.payload.replace(b'"rows":100', b'"rows":101'))
    with pytest.raises(SignatureError, match="altered or forged"):
        PredictionQuery.verify(forged)


def test_query_and_answer_keys_are_bound_to_model_query_and_recipient() -> None:
    enclave = HpkePrivateKey.generate()
    key = os.urandom(32)
    wrapped = hpke.wrap_key(
        key, enclave.public_key, hpke.query_key_info("m", "q1", enclave.public_key)
    )
    assert (
        hpke.unwrap_key(wrapped, enclave, hpke.query_key_info("m", "q1", enclave.public_key)) == key
    )
    for info in (
        hpke.query_key_info("m", "q2", enclave.public_key),
        hpke.answer_key_info("m", "q1", enclave.public_key),
        hpke.query_key_info("n", "q1", enclave.public_key),
    ):
        with pytest.raises(IntegrityError):
            hpke.unwrap_key(wrapped, enclave, info)


def test_answers_take_the_shape_the_terms_say() -> None:
    import numpy as np
    import pyarrow as pa

    from protocols import predictions

    binary = np.array([0.12345, 0.5, 0.98765], dtype=np.float32)
    rounded = predictions.shape_answer(binary, "binary:logistic", None, "probability", 2)
    assert rounded.column("prediction").to_pylist() == [0.12, 0.5, 0.99]
    exact = predictions.shape_answer(binary, "binary:logistic", None, "probability", None)
    assert exact.column("prediction").to_pylist() == binary.tolist()
    classes = predictions.shape_answer(binary, "binary:logistic", None, "class", None)
    assert classes.column("class").to_pylist() == [0, 1, 1]
    multi = np.array([[0.2, 0.7, 0.1], [0.5, 0.2, 0.3]])
    table = predictions.shape_answer(multi, "multi:softprob", 3, "probability", 1)
    assert table.column_names == ["prediction_0", "prediction_1", "prediction_2"]
    assert table.column("prediction_1").to_pylist() == [0.7, 0.2]
    assert predictions.shape_answer(multi, "multi:softprob", 3, "class", None).column(
        "class"
    ).to_pylist() == [1, 0]
    assert predictions.answer_columns("reg:squarederror", None, "probability") == ["prediction"]
    again = predictions.from_ipc(predictions.to_ipc(table), "answer")
    assert again.equals(table)
    with pytest.raises(FormatError, match="the answer is not an Arrow IPC stream"):
        predictions.from_ipc(b"not arrow", "the answer")
    assert isinstance(again, pa.Table)
