"""A coordinator operator who edits its database cannot change what a sealed model answers,
to whom, or whether it still exists: the enclave decides from its own record. Through real
coordinator, enclave worker and `detente party` processes.

One sealed job for the module: alice and bob own the data, alice and carol may query
the model, dave is registered and named nowhere. The tests run in file order; the last
retires the model.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from party_client.home import PartyHome
from party_client.remote import CoordinatorError
from protocols import grpc_status
from protocols.documents import ModelRetirement, PredictionQuery
from protocols.errors import ConsentError, IntegrityError, SignatureError
from protocols.keys import SigningKey
from protocols.statements import Envelope
from protocols.wire.v1 import enclave_pb2, enclave_pb2_grpc
from tests.e2e.conftest import (
    LABEL,
    Running,
    contribute,
    credit_rows,
    detente,
    propose,
    wait_state,
    write_csv,
)

pytestmark = pytest.mark.e2e

CAROL_BUDGET = 1000


@dataclass
class Sealed:
    running: Running
    job_id: str
    terms_digest: str
    homes: dict[str, Path]
    tmp: Path

    def sql(self, statement: str, *args: Any) -> list[Any]:
        """What a malicious operator does: edit the coordinator's SQLite file."""
        with sqlite3.connect(self.running.db) as db:
            return db.execute(statement, args).fetchall()

    def predict(self, who: str, rows: int, start: int = 20_000, check: bool = True) -> Any:
        """`detente party predict --json` of ``rows`` held-out credit rows as ``who``."""
        table = credit_rows(start, rows).drop_columns([LABEL, "ID"])
        path = write_csv(table, self.tmp / f"{who}-{start}-{rows}.csv")
        out = self.tmp / f"{who}-{start}-{rows}-answer.csv"
        args = ["party", "predict", self.job_id, str(path), "--out", str(out), "--json"]
        done = detente(args, self.homes[who], check=check)
        return json.loads(done.stdout) if check else done

    def retirement(self, who: str) -> bytes:
        key = PartyHome(self.homes[who]).signing_key()
        return ModelRetirement(self.job_id, self.terms_digest).sign(key).to_bytes()


@pytest.fixture(scope="module")
def sealed(running: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sealed]:
    tmp = tmp_path_factory.mktemp("sealed-attack")
    homes: dict[str, Path] = {}
    homes["alice"], a_ds = contribute(running, "alice", credit_rows(0, 400), tmp)
    homes["bob"], b_ds = contribute(running, "bob", credit_rows(400, 400), tmp)
    for name in ("carol", "dave"):
        homes[name] = running.party(name)
        detente(["party", "attest"], homes[name])
    job_id = propose(
        homes["alice"],
        [a_ds, b_ds],
        *("--id", "ID", "--rounds", "5", "--sealed", "--output", "metrics"),
        *("--query", "alice=100000", "--query", f"carol={CAROL_BUDGET}"),
    )
    detente(["party", "approve", job_id, "--yes"], homes["alice"])
    detente(["party", "approve", job_id, "--yes", "--accept-warnings"], homes["bob"])
    done = wait_state(homes["alice"], job_id, ("succeeded", "failed"), timeout=300)
    assert done["state"] == "succeeded", done
    with sqlite3.connect(running.db) as db:
        (digest,) = db.execute(
            "SELECT terms_digest FROM sealed_models WHERE model_id=?", (job_id,)
        ).fetchone()
    yield Sealed(running, job_id, digest, homes, tmp)


def remaining(answer: dict[str, Any]) -> int:
    return int(answer["remaining"]["total_rows"])


def test_a_querier_the_operator_adds_gets_no_answer(sealed: Sealed) -> None:
    s = sealed
    dave = PartyHome(s.homes["dave"]).signing_key().verify_key.hex
    (queriers,) = s.sql("SELECT queriers FROM sealed_models WHERE model_id=?", s.job_id)[0]
    s.sql(
        "UPDATE sealed_models SET queriers=? WHERE model_id=?",
        json.dumps([*json.loads(queriers), dave]),
        s.job_id,
    )
    # The coordinator now lists the model to dave and relays his query; the enclave,
    # which reads the queriers from the terms it sealed the model with, refuses it.
    models = json.loads(detente(["party", "models", "--json"], s.homes["dave"]).stdout)
    assert [m["model_id"] for m in models] == [s.job_id]
    done = s.predict("dave", 10, check=False)
    assert done.returncode == 1
    assert f"is not a querier of model {s.job_id!r}" in done.stderr
    assert not (s.tmp / "dave-20000-10-answer.csv").exists()
    counted = s.sql("SELECT querier FROM model_queries WHERE model_id=?", s.job_id)
    assert (dave,) not in counted


def test_counts_the_operator_resets_reset_no_budget(sealed: Sealed) -> None:
    s = sealed
    assert remaining(s.predict("carol", 300)) == CAROL_BUDGET - 300
    assert s.sql("SELECT queries, rows FROM model_queries") == [(1, 300)]
    s.sql("DELETE FROM model_queries")
    assert remaining(s.predict("carol", 300, start=21_000)) == CAROL_BUDGET - 600
    done = s.predict("carol", 500, start=22_000, check=False)
    assert done.returncode == 1
    assert "400 rows in all" in done.stderr  # the budget the enclave counted, named


def test_a_replayed_query_spends_no_budget(sealed: Sealed) -> None:
    """The operator keeps a query it relayed and sends it to the enclave again itself."""
    import party_client

    s = sealed
    captured: list[tuple[bytes, bytes]] = []
    table = credit_rows(23_000, 50).drop_columns([LABEL, "ID"])
    with party_client.QuerySession(PartyHome(s.homes["carol"]), s.job_id) as session:
        relay = session._remote.predict

        def keep(query: bytes, ciphertext: bytes, **kw: Any) -> Any:
            captured.append((query, ciphertext))
            return relay(query, ciphertext, **kw)

        session._remote.predict = keep  # type: ignore[method-assign]
        session.predict_table(table)
        assert session.last is not None
        left = session.last.remaining.total
    [(query, ciphertext)] = captured
    stub = enclave_pb2_grpc.EnclaveStub(s.running.enclave_channel())
    requests = [enclave_pb2.PredictRequest(query=query)] + [
        enclave_pb2.PredictRequest(chunk=ciphertext[i : i + (1 << 20)])
        for i in range(0, len(ciphertext), 1 << 20)
    ]
    with pytest.raises(grpc.RpcError) as replayed:
        list(stub.Predict(iter(requests)))
    err = replayed.value
    assert grpc_status.error_class(err.code(), err.trailing_metadata()) is IntegrityError
    query_id = PredictionQuery.verify(Envelope.from_bytes(query)).query_id
    assert f"query {query_id!r} of model {s.job_id!r} was already answered" in err.details()
    assert remaining(s.predict("carol", 10, start=24_000)) == left - 10


def test_the_operator_cannot_retire_the_model_or_forge_a_retirement(sealed: Sealed) -> None:
    s = sealed
    # Marking it retired in the database only makes the coordinator refuse to relay
    # (the operator can always deny service); the model is untouched in the enclave.
    s.sql("UPDATE sealed_models SET state='retired' WHERE model_id=?", s.job_id)
    done = s.predict("alice", 5, check=False)
    assert done.returncode == 1 and "was retired by its owners" in done.stderr
    s.sql("UPDATE sealed_models SET state='sealed' WHERE model_id=?", s.job_id)
    s.predict("alice", 5, start=25_000)

    # A retirement "from bob" the operator signed itself, then alice's genuine one: the
    # coordinator now holds one from every owner and asks the enclave, which refuses.
    bob = PartyHome(s.homes["bob"]).signing_key().verify_key
    operator = SigningKey.generate()
    genuine = Envelope.from_bytes(s.retirement("alice"))
    forged = Envelope(genuine.payload_type, genuine.payload, bob, operator.sign(genuine.payload))
    s.sql(
        "INSERT INTO model_retirements (model_id, owner, envelope, at) VALUES (?, ?, ?, 0)",
        s.job_id,
        bob.hex,
        forged.to_bytes(),
    )
    with s.running.remote(s.homes["alice"]) as remote:
        with pytest.raises(CoordinatorError) as refused:
            remote.retire_model(s.job_id, genuine.to_bytes())
    assert refused.value.kind is SignatureError
    assert f"`detente party retire {s.job_id}`" in str(refused.value)
    assert s.sql("SELECT state FROM sealed_models WHERE model_id=?", s.job_id) == [("sealed",)]
    s.sql("DELETE FROM model_retirements WHERE owner=?", bob.hex)

    # The operator calls the enclave itself with alice's retirement alone.
    stub = enclave_pb2_grpc.EnclaveStub(s.running.enclave_channel())
    with pytest.raises(grpc.RpcError) as alone:
        stub.RetireModel(
            enclave_pb2.RetireModelRequest(model_id=s.job_id, retirements=[genuine.to_bytes()])
        )
    err = alone.value
    assert grpc_status.error_class(err.code(), err.trailing_metadata()) is ConsentError
    s.predict("alice", 5, start=26_000)  # the model still answers


def test_a_retired_model_stays_retired_whatever_the_database_says(sealed: Sealed) -> None:
    s = sealed
    detente(["party", "retire", s.job_id, "--yes"], s.homes["alice"])
    detente(["party", "retire", s.job_id, "--yes"], s.homes["bob"])
    assert s.sql("SELECT state FROM sealed_models WHERE model_id=?", s.job_id) == [("retired",)]
    s.sql("UPDATE sealed_models SET state='sealed', retired_at=NULL WHERE model_id=?", s.job_id)
    s.sql("DELETE FROM model_retirements WHERE model_id=?", s.job_id)
    # The coordinator relays again; the enclave destroyed the model and says so.
    done = s.predict("carol", 5, start=27_000, check=False)
    assert done.returncode == 1
    assert "its file and key are destroyed" in done.stderr
    # Every owner's retirement sent again: the enclave confirms its tombstone, and the
    # coordinator's record is retired once more.
    for who in ("alice", "bob"):
        with s.running.remote(s.homes[who]) as remote:
            state = remote.retire_model(s.job_id, s.retirement(who)).state
    assert state == "retired"
