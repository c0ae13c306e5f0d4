"""Attacks on sealed models through a real worker: restart, rollback, replay, tampering, retiring.

The attacker is the host (it kills the worker, copies and puts back the
encrypted mount's directory, reads every file and log), the coordinator that
relays queries (it replays, delays, alters and swaps them), a querier that
sends what the model does not take, and a party that wants a model retired
without every owner. Each attack runs against a real worker process; each
refusal is checked to name what is wrong, to charge nothing, and to carry no
value of the rows.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from query_testkit import (
    Enclave,
    QueryRefused,
    enclave_of,
    querier,
    query,
    refused,
    resigned,
    retire,
    retirement,
    seal_query,
    send,
)
from test_worker_sealed import customers
from worker_testkit import Job, Owner, Worker, build_worker_instance, collect, run_job, seal_job

from coordinator.enclave_client import EnclaveCallError
from libos import launcher
from libos.config import Mount
from libos.runtime import SimRuntime
from libos.sim import SimPlatform
from protocols import hpke
from protocols.documents import QUERY_WINDOW_SECONDS, Budget, ResultStatement
from protocols.keys import HpkePrivateKey, SigningKey
from protocols.statements import Envelope

TEXT_CANARY = "CANARY-q-7f3a9c"
NUMBER_CANARY = 7357.8125  # exact in float32 and float64
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


class Parties:
    def __init__(self) -> None:
        self.a, self.b = Owner("a"), Owner("b")  # the data owners
        self.q = Owner("q")  # a querier who owns nothing


@pytest.fixture(scope="module")
def parties() -> Parties:
    return Parties()


def sealed(worker: Worker, enclave: Enclave, parties: Parties, job_id: str) -> Job:
    job = seal_job(
        enclave.hpke_key,
        enclave.mrenclave,
        job_id,
        [
            (parties.a, f"{job_id}-a", customers(300, 1, "binary:logistic")),
            (parties.b, f"{job_id}-b", customers(200, 2, "binary:logistic")),
        ],
        id_column="id",
        outputs=["metrics"],
        model="sealed",
        params=PARAMS,
        queriers=[querier(parties.q, 10_000, 5_000), querier(parties.a, 10_000)],
    )
    outputs, _ = collect(run_job(worker, job))
    statement = ResultStatement.verify(
        Envelope.from_bytes(outputs["statement"]), enclave.signing_key
    )
    assert statement.sealed_model == job_id
    return job


@pytest.fixture(scope="module")
def model(worker: Worker, enclave: Enclave, parties: Parties) -> Job:
    return sealed(worker, enclave, parties, "guarded")


def rows(count: int, seed: int = 0) -> pa.Table:
    return customers(count, 10 + seed, "binary:logistic").drop_columns(["id", "label"])


def left(worker: Worker, enclave: Enclave, me: Owner, model_id: str = "guarded") -> Budget:
    """What ``me`` has left after a one-row probe query (the answer states it)."""
    answer, _ = query(worker, enclave, me, model_id, rows(1, seed=99))
    return answer.remaining


def mount_of(worker: Worker) -> Any:
    """The worker's encrypted mount, opened as the SIMULATED host can (simulation only: its
    platform secret is a host file; on hardware nothing outside the enclave could)."""
    platform = SimPlatform(launcher.platform_dir(worker.instance))
    runtime = SimRuntime(
        worker.measured, worker.instance, platform, (Mount("/data", "data", "mrenclave"),)
    )
    return runtime.mount("/data")


def test_usage_survives_a_worker_crash_and_restart(worker, model, enclave, parties):
    before = left(worker, enclave, parties.q)
    answer, _ = query(worker, enclave, parties.q, "guarded", rows(30))
    assert answer.remaining == Budget(before.total - 30, before.today - 30)
    worker.kill()  # SIGKILL by pid: no clean shutdown
    worker.start()
    enclave_after = enclave_of(worker)
    assert enclave_after.signing_key == enclave.signing_key  # same sealed identity
    answer, _ = query(worker, enclave, parties.q, "guarded", rows(10))
    assert answer.remaining == Budget(before.total - 40, before.today - 40)


def test_a_host_that_puts_back_an_older_mount_cannot_reset_the_budget(
    worker, model, enclave, parties
):
    query(worker, enclave, parties.q, "guarded", rows(20))
    data = worker.instance / "data"
    old = worker.instance.parent / "data-old"
    shutil.copytree(data, old)  # the host keeps a copy ...
    answer, _ = query(worker, enclave, parties.q, "guarded", rows(50))  # ... then more rows go
    spent = answer.remaining
    worker.stop()
    current = worker.instance.parent / "data-current"
    shutil.move(data, current)
    shutil.copytree(old, data)  # ... and puts the old copy back
    with pytest.raises(AssertionError) as failure:
        worker.start()
    # The worker refuses the mount — its keys and every model's usage are in it — naming why.
    assert "was rolled back" in str(failure.value)
    assert "platform counter" in str(failure.value)
    # With the real files back the budget is where the queries left it, not reset.
    shutil.rmtree(data)
    shutil.move(current, data)
    worker.start()
    answer, _ = query(worker, enclave, parties.q, "guarded", rows(5))
    assert answer.remaining == Budget(spent.total - 5, spent.today - 5)


def test_a_replayed_query_is_refused_and_charges_nothing(worker, model, enclave, parties):
    sealed_query = seal_query(enclave, parties.q, "guarded", rows(25))
    answer, _ = query(worker, enclave, parties.q, "guarded", rows(1))
    first = send(worker, sealed_query.envelope, sealed_query.rows)
    assert first[1]
    refusal = refused(worker, sealed_query)  # the coordinator relays it again
    assert refusal.code == "INVALID_ARGUMENT"
    assert f"query {sealed_query.query.query_id!r} of model 'guarded' was already answered" in (
        refusal.details
    )
    again, _ = query(worker, enclave, parties.q, "guarded", rows(1))
    assert again.remaining.total == answer.remaining.total - 25 - 1


@pytest.mark.parametrize("skew", [-(QUERY_WINDOW_SECONDS + 90), QUERY_WINDOW_SECONDS + 90])
def test_a_query_outside_the_time_window_is_refused(worker, model, enclave, parties, skew):
    before = left(worker, enclave, parties.q)
    stale = seal_query(enclave, parties.q, "guarded", rows(5), issued_at=int(time.time()) + skew)
    refusal = refused(worker, stale)
    assert refusal.code == "INVALID_ARGUMENT"
    direction = "before" if skew < 0 else "after"
    assert f"s {direction} the enclave's clock; queries are answered within 600 s" in (
        refusal.details
    )
    assert left(worker, enclave, parties.q).total == before.total - 1


def test_altered_or_misdirected_rows_are_refused_and_charge_nothing(
    worker, model, enclave, parties
):
    me = parties.q
    before = left(worker, enclave, me)
    good = seal_query(enclave, me, "guarded", rows(12))
    flipped = bytearray(good.rows)
    flipped[len(flipped) // 2] ^= 1
    cases: list[tuple[bytes, bytes, str, str]] = []
    # Altered on the way: the digest the query signs no longer matches.
    cases.append((good.envelope, bytes(flipped), "INVALID_ARGUMENT", "do not match the digest"))
    # Altered, and the query re-signed over it by the querier itself: AEAD refuses.
    signed_flip = resigned(
        replace(good, rows=bytes(flipped)),
        me,
        ciphertext_sha256=hashlib.sha256(bytes(flipped)).hexdigest(),
    )
    cases.append(
        (signed_flip.envelope, signed_flip.rows, "INVALID_ARGUMENT", "failed authentication")
    )
    # Rows whose key is wrapped to another key than the one the query names.
    other = HpkePrivateKey.generate()
    wrapped = hpke.wrap_key(
        b"k" * 32,
        other.public_key,
        hpke.query_key_info("guarded", good.query.query_id, other.public_key),
    )
    misdirected = resigned(good, me, wrapped_key=wrapped)
    cases.append((misdirected.envelope, misdirected.rows, "INVALID_ARGUMENT", "cannot unwrap"))
    # Sealed to another enclave key, or another measurement.
    to_other_key = resigned(good, me, sealed_to_hpke_key=other.public_key)
    cases.append((to_other_key.envelope, good.rows, "PERMISSION_DENIED", "another enclave key"))
    to_other_enclave = resigned(good, me, sealed_to_mrenclave="cd" * 32)
    cases.append(
        (to_other_enclave.envelope, good.rows, "PERMISSION_DENIED", "another enclave measurement")
    )
    # The query altered after it was signed (its rows count): the signature fails.
    envelope = Envelope.from_bytes(good.envelope)
    forged = replace(envelope, payload=envelope.payload.replace(b'"rows":12', b'"rows":2'))
    assert forged.payload != envelope.payload
    cases.append((forged.to_bytes(), good.rows, "INVALID_ARGUMENT", "signature"))
    # A query signed by someone else with the querier's key id.
    impostor = replace(envelope, signature=SigningKey.generate().sign(b"x"))
    cases.append((impostor.to_bytes(), good.rows, "INVALID_ARGUMENT", "signature"))
    # The rows hold more rows than the query signs (and pays for).
    more = seal_query(enclave, me, "guarded", rows(13))
    fewer = resigned(more, me, rows=3)
    cases.append(
        (fewer.envelope, fewer.rows, "INVALID_ARGUMENT", "hold 13 rows, the query signs 3")
    )
    for envelope_bytes, blob, code, text in cases:
        with pytest.raises(QueryRefused) as refusal:
            send(worker, envelope_bytes, blob)
        assert refusal.value.code == code, (text, refusal.value)
        assert text in refusal.value.details, refusal.value.details
    assert left(worker, enclave, me).total == before.total - 1  # only the probe's own row


def test_a_wrong_schema_is_refused_naming_the_columns_and_no_value(worker, model, enclave, parties):
    me = parties.q
    before = left(worker, enclave, me)
    table = rows(8)
    bad = (
        table.drop_columns(["x2"])
        .set_column(0, "x0", pa.array([TEXT_CANARY] * 8, pa.string()))
        .append_column("secret", pa.array([NUMBER_CANARY] * 8))
    )
    bad = bad.set_column(
        bad.column_names.index("city"), "city", pa.array([NUMBER_CANARY] * 8, pa.float64())
    )
    refusal = refused(worker, seal_query(enclave, me, "guarded", bad))
    assert refusal.code == "FAILED_PRECONDITION"
    details = refusal.details
    assert "lacks the column(s) 'x2'" in details
    assert "has column(s) the model does not take: 'secret'" in details
    assert "non-numbers in the numeric column(s) 'x0'" in details
    assert "non-text in the categorical column(s) 'city'" in details
    assert TEXT_CANARY not in details and str(NUMBER_CANARY) not in details
    infinite = table.set_column(1, "x1", pa.array([np.inf] * 8, pa.float32()))
    refusal = refused(worker, seal_query(enclave, me, "guarded", infinite))
    assert "column 'x1' has 8 infinite values" in refusal.details
    assert left(worker, enclave, me).total == before.total - 1


def test_retirement_needs_every_owner_then_destroys_the_model(worker, enclave, parties):
    job = sealed(worker, enclave, parties, "doomed")
    digest = job.envelope.digest
    table = rows(4)
    query(worker, enclave, parties.q, "doomed", table)
    fs = mount_of(worker)
    assert {"models/doomed/key", "models/doomed/model", "models/doomed/meta"} <= set(fs.files())
    assert any(p.startswith("checkpoints/doomed/") for p in fs.files())
    a, b, q = parties.a, parties.b, parties.q
    attempts = [
        (
            [retirement(a, "doomed", digest)],
            "PERMISSION_DENIED",
            "missing: " + b.signing.verify_key.hex[:16],
        ),
        ([], "PERMISSION_DENIED", "needs every data owner's signature"),
        (
            [retirement(a, "doomed", digest), retirement(q, "doomed", digest)],
            "PERMISSION_DENIED",
            "which owns no data set of the job that sealed it",
        ),
        (
            [retirement(a, "doomed", digest), retirement(b, "doomed", "ab" * 32)],
            "PERMISSION_DENIED",
            "names other job terms",
        ),
        (
            [retirement(a, "doomed", digest), retirement(b, "guarded", digest)],
            "PERMISSION_DENIED",
            "names model 'guarded', not 'doomed'",
        ),
    ]
    real_b = Envelope.from_bytes(retirement(b, "doomed", digest))
    forged = replace(real_b, signature=SigningKey.generate().sign(real_b.payload))
    attempts.append(
        ([retirement(a, "doomed", digest), forged.to_bytes()], "INVALID_ARGUMENT", "signature")
    )
    for retirements, code, text in attempts:
        with pytest.raises(QueryRefused) as refusal:
            retire(worker, "doomed", retirements)
        assert refusal.value.code == code and text in refusal.value.details, refusal.value
        query(worker, enclave, parties.q, "doomed", table)  # still answers

    retire(worker, "doomed", [retirement(b, "doomed", digest), retirement(a, "doomed", digest)])
    files = set(fs.files())
    assert not {p for p in files if p.startswith(("models/doomed/", "checkpoints/doomed/"))} - {
        "models/doomed/retired"
    }, files
    refusal = refused(worker, seal_query(enclave, parties.q, "doomed", table))
    assert refusal.code == "FAILED_PRECONDITION"
    assert "the model 'doomed' was retired by its owners" in refusal.details
    # Other models are untouched.
    query(worker, enclave, parties.q, "guarded", table)

    worker.stop()
    worker.start()
    refusal = refused(worker, seal_query(enclave, parties.a, "doomed", table))
    assert refusal.code == "FAILED_PRECONDITION" and "was retired" in refusal.details
    # A querier not named is still told it is not one (retirement reveals nothing to it).
    refusal = refused(worker, seal_query(enclave, parties.b, "doomed", table))
    assert refusal.code == "PERMISSION_DENIED"
    # Retiring again is harmless; re-running the job cannot bring the model back.
    retire(worker, "doomed", [retirement(a, "doomed", digest), retirement(b, "doomed", digest)])
    with pytest.raises(EnclaveCallError) as failure:
        list(run_job(worker, job))
    assert failure.value.code == "FAILED_PRECONDITION"
    assert "no job may seal a model under its id again" in failure.value.details


def test_a_rerun_of_the_sealing_job_keeps_the_model_and_its_usage(worker, model, enclave, parties):
    before = left(worker, enclave, parties.q)
    table = rows(15, seed=3)
    _, first = query(worker, enclave, parties.q, "guarded", table)
    outputs, _ = collect(run_job(worker, model))  # the coordinator runs the same job again
    statement = ResultStatement.verify(
        Envelope.from_bytes(outputs["statement"]), enclave.signing_key
    )
    assert statement.sealed_model == "guarded"
    answer, again = query(worker, enclave, parties.q, "guarded", table)
    assert again.equals(first)
    assert answer.remaining.total == before.total - 15 - 15


def test_query_values_reach_no_host_file_or_log(worker, model, enclave, parties):
    table = rows(30)
    city = table.column("city").to_pylist()
    city[::3] = [TEXT_CANARY] * len(city[::3])
    x0 = table.column("x0").to_numpy().copy()
    x0[::4] = NUMBER_CANARY
    table = table.set_column(table.column_names.index("city"), "city", pa.array(city, pa.string()))
    table = table.set_column(table.column_names.index("x0"), "x0", pa.array(x0))
    query(worker, enclave, parties.q, "guarded", table)
    # And through failures: a mistyped column and a query over the budget.
    refused(worker, seal_query(enclave, parties.q, "guarded", table.drop_columns(["x2"])))
    refused(worker, seal_query(enclave, parties.a, "guarded", pa.concat_tables([table] * 400)))
    forms = {
        "text as UTF-8": TEXT_CANARY.encode(),
        "text as UTF-16": TEXT_CANARY.encode("utf-16-le"),
        "number as text": str(NUMBER_CANARY).encode(),
        "number as float64": struct.pack("<d", NUMBER_CANARY),
    }
    files = [p for p in worker.instance.rglob("*") if p.is_file()]
    assert any(p.name == "worker.log" for p in files)
    for path in files:
        content = path.read_bytes()
        for what, pattern in forms.items():
            assert pattern not in content, f"canary ({what}) found in {path}"
