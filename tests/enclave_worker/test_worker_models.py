"""The model store, usage and cache in-process, on a real encrypted mount (libos.efs, SIMULATION).

What a real worker cannot be made to do on cue is tested here: a worker
that died between storing a model and signing its statement, or half-way
through storing or retiring one; the daily budget across a UTC midnight; the
cache's eviction order. The worker tests (test_worker_sealed*.py) cover the
rest through real processes.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import xgboost as xgb
from query_testkit import Enclave, querier, seal_query
from worker_testkit import Owner

from enclave_worker.identity import EnclaveIdentity
from enclave_worker.models import (
    Feature,
    ModelCache,
    ModelSchema,
    ModelStore,
    QueryHandler,
    SealedModel,
    Tombstone,
    Usage,
)
from enclave_worker.models.cache import MIN_ENTRY_BYTES
from libos.config import Mount
from libos.image import Measurement
from libos.runtime import SimRuntime
from libos.sim import SimPlatform
from protocols.documents import JobTerms
from protocols.errors import BudgetExhausted, IntegrityError, NotFound, WrongState
from protocols.keys import HpkePrivateKey, SigningKey
from protocols.statements import Envelope

MRENCLAVE = hashlib.sha256(b"model store test enclave").hexdigest()
NAMES = ["x0", "x1"]


def _mount(tmp_path: Path) -> Any:
    measurement = Measurement(MRENCLAVE, "00" * 32, "sim", False, 1, 1, 0)
    runtime = SimRuntime(
        measurement,
        tmp_path / "instance",
        SimPlatform(tmp_path / "platform"),
        (Mount("/data", "data", "mrenclave"),),
    )
    return runtime.mount("/data")


def _booster() -> bytes:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    dtrain = xgb.DMatrix(x, label=(x[:, 0] > 0).astype(float), feature_names=NAMES)
    model = xgb.train({"max_depth": 2, "nthread": 1}, dtrain, num_boost_round=3)
    return bytes(model.save_raw("ubj"))


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.fs = _mount(tmp_path)
        self.store = ModelStore(self.fs)
        self.identity = EnclaveIdentity(
            SigningKey.generate(), HpkePrivateKey.generate(), "sim", MRENCLAVE
        )
        self.enclave = Enclave(
            self.identity.hpke_key.public_key, MRENCLAVE, self.identity.signing_key.verify_key
        )
        self.owner, self.me = Owner("owner"), Owner("me")
        terms = JobTerms(
            job_id="m1",
            datasets=[("d1", "ab" * 32)],
            join="horizontal",
            objective="binary:logistic",
            label="label",
            params={"nthread": 1},
            num_rounds=3,
            seed=0,
            allowed_mrenclaves=[MRENCLAVE],
            outputs=["metrics"],
            recipients=[self.owner.recipient()],
            expires_at=int(time.time()) + 3600,
            proposer=self.owner.signing.verify_key.hex,
            model="sealed",
            queriers=[querier(self.me, 100, 10)],
        )
        self.terms = terms.sign(self.owner.signing)
        schema = ModelSchema(tuple(Feature(n) for n in NAMES), "binary:logistic")
        self.model = SealedModel(_booster(), schema)
        self.now = time.time()
        self.handler = QueryHandler(self.store, ModelCache(), self.identity, lambda: self.now)

    def seal(self) -> None:
        assert self.store.seal(self.terms, [self.owner.signing.verify_key], self.model)

    def query(self, rows: int = 3) -> Any:
        table = pa.table({n: np.zeros(rows) for n in NAMES})
        sealed = seal_query(self.enclave, self.me, "m1", table, issued_at=int(self.now))
        return sealed


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_a_model_stored_without_its_statement_answers_no_query(setup: Setup) -> None:
    setup.seal()  # the worker then died before the job signed its statement
    sealed = setup.query()
    with pytest.raises(WrongState, match="'m1' is not ready: its job stored it but signed no"):
        setup.handler.check(sealed.envelope)
    # A re-run keeps the stored model (and would keep its usage), then activates it.
    assert not setup.store.seal(setup.terms, [setup.owner.signing.verify_key], setup.model)
    setup.store.activate("m1", b"statement")
    answer = setup.handler.answer(setup.handler.check(sealed.envelope), sealed.rows)
    assert answer.remaining.total == 97 and answer.remaining.today == 7


def test_a_half_written_model_is_never_loaded_and_removed_at_start(setup: Setup) -> None:
    setup.fs.write_bytes("models/m1/key", b"k" * 32)
    setup.fs.write_bytes("models/m1/model", b"sealed bytes")  # died before meta
    with pytest.raises(NotFound, match="keeps no sealed model 'm1'"):
        setup.handler.check(setup.query().envelope)
    ModelStore(setup.fs).sweep()
    assert setup.fs.files() == []
    setup.seal()  # the job, run again, stores it whole
    assert {"models/m1/key", "models/m1/model", "models/m1/meta"} == set(setup.fs.files())


def test_an_interrupted_retirement_is_finished_at_start(setup: Setup) -> None:
    setup.seal()
    setup.store.activate("m1", b"statement")
    setup.fs.write_bytes("checkpoints/m1/abc.xgb", b"finished model")
    tombstone = Tombstone("m1", setup.terms.digest, (setup.owner.signing.verify_key,), (), 0)
    setup.fs.write_bytes("models/m1/retired", tombstone.to_bytes())  # died right after
    ModelStore(setup.fs).sweep()
    assert setup.fs.files() == ["models/m1/retired"]


def test_the_daily_budget_starts_again_on_the_next_utc_day(setup: Setup) -> None:
    setup.seal()
    setup.store.activate("m1", b"statement")
    midnight = (int(time.time()) // 86400 + 1) * 86400
    setup.now = midnight - 60.0
    first = setup.query(rows=8)
    answer = setup.handler.answer(setup.handler.check(first.envelope), first.rows)
    assert (answer.remaining.total, answer.remaining.today) == (92, 2)
    with pytest.raises(BudgetExhausted, match="has 92 rows in all, 2 today left"):
        setup.handler.check(setup.query(rows=3).envelope)
    setup.now = midnight + 60.0  # a new UTC day by the enclave's clock
    second = setup.query(rows=10)
    answer = setup.handler.answer(setup.handler.check(second.envelope), second.rows)
    assert (answer.remaining.total, answer.remaining.today) == (82, 0)
    # The first query's id is still remembered (within the window): a replay is refused.
    with pytest.raises(IntegrityError, match="already answered"):
        setup.handler.check(first.envelope)
    usage = setup.store.usage("m1", setup.me.signing.verify_key)
    assert set(usage.recent) == {first.query.query_id, second.query.query_id}
    # Ids older than the window are pruned when the next query is charged.
    setup.now = midnight + 60.0 + 700
    third = setup.query(rows=1)
    with pytest.raises(BudgetExhausted, match="today"):
        setup.handler.check(third.envelope)
    assert Usage().charged(third.query, setup.now).recent == {third.query.query_id: int(setup.now)}
    pruned = usage.charged(third.query, setup.now)
    assert set(pruned.recent) == {third.query.query_id}


def test_a_query_between_check_and_charge_cannot_overspend(setup: Setup) -> None:
    setup.seal()
    setup.store.activate("m1", b"statement")
    a, b = setup.query(rows=6), setup.query(rows=6)
    checked_a = setup.handler.check(a.envelope)
    checked_b = setup.handler.check(b.envelope)  # both pass: 10 rows today, 6 each
    setup.handler.answer(checked_a, a.rows)
    with pytest.raises(BudgetExhausted, match="4 today left"):
        setup.handler.answer(checked_b, b.rows)
    assert setup.store.usage("m1", setup.me.signing.verify_key).total == 6


def test_the_cache_evicts_the_least_recently_used_within_its_bytes() -> None:
    raw = _booster()
    size = max(len(raw), MIN_ENTRY_BYTES)  # what the cache counts a model at
    cache = ModelCache(budget=2 * size + 10)
    loads: list[str] = []

    def load(name: str) -> Any:
        def go() -> bytes:
            loads.append(name)
            return raw

        return go

    for name in ("a", "b", "a", "c", "a", "b"):
        cache.get(name, load(name))
    # a, b loaded; a hit; c evicts b (least recent); a hit; b evicts c.
    assert loads == ["a", "b", "c", "b"]
    assert "a" in cache and "b" in cache and "c" not in cache
    assert cache.held <= cache.budget
    cache.evict("a")
    assert "a" not in cache


def test_terms_of_the_stored_model_are_the_signed_ones(setup: Setup) -> None:
    setup.seal()
    record = setup.store.record("m1")
    assert not isinstance(record, Tombstone)
    assert record.terms_envelope == Envelope.from_bytes(setup.terms.to_bytes())
    assert record.owners == (setup.owner.signing.verify_key,)
    assert record.schema == setup.model.schema and not record.active
    # The model file opens only with its own key, and holds exactly the booster.
    assert setup.store.load("m1") == setup.model.raw
    assert setup.model.raw not in setup.fs.read_bytes("models/m1/model")
