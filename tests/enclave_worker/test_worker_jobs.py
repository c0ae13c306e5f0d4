"""The enclave's consent checks and training path, driven with real crypto (no processes)."""

from __future__ import annotations

import hashlib
import itertools
import secrets
import time

import numpy as np
import pyarrow as pa
import pytest
from worker_testkit import Owner, make_table

from enclave_worker import jobs
from enclave_worker.identity import EnclaveIdentity
from party_client.tables import to_ipc
from protocols import hpke, stream
from protocols.documents import (
    Approval,
    DatasetManifest,
    JobTerms,
    ResultStatement,
    schema_columns,
    schema_sha256,
)
from protocols.errors import ConsentError, IntegrityError, SignatureError
from protocols.keys import HpkePrivateKey, SigningKey
from protocols.statements import Envelope

MRENCLAVE = "ab" * 32


def seal(
    enclave: EnclaveIdentity,
    owner: Owner,
    dataset_id: str,
    table: pa.Table,
    signer: SigningKey | None = None,
) -> tuple[bytes, bytes]:
    key = secrets.token_bytes(32)
    blob = stream.seal_stream(key, to_ipc(table), dataset_id.encode(), chunk_size=4096)
    enclave_key = enclave.hpke_key.public_key
    manifest = DatasetManifest(
        dataset_id=dataset_id,
        name="t.csv",
        owner_key=owner.signing.verify_key,
        schema_sha256=schema_sha256(schema_columns(table.schema)),
        row_count=table.num_rows,
        ciphertext_sha256=hashlib.sha256(blob).hexdigest(),
        ciphertext_size=len(blob),
        wrapped_key=hpke.wrap_key(key, enclave_key, hpke.data_key_info(dataset_id, enclave_key)),
        sealed_to_mrenclave=enclave.mrenclave,
        sealed_to_hpke_key=enclave_key,
    ).sign(signer or owner.signing)
    return manifest.to_bytes(), blob


@pytest.fixture
def world():
    enclave = EnclaveIdentity(SigningKey.generate(), HpkePrivateKey.generate(), "sim", MRENCLAVE)
    owners = [Owner("a"), Owner("b")]
    tables = [make_table(300, 1), make_table(200, 2)]
    sealed = [seal(enclave, o, f"{o.name}-data", t) for o, t in zip(owners, tables)]
    manifests = [m for m, _ in sealed]
    terms = JobTerms(
        job_id="job-1",
        datasets=[
            (f"{o.name}-data", Envelope.from_bytes(m).digest) for o, m in zip(owners, manifests)
        ],
        join="horizontal",
        objective="binary:logistic",
        label="label",
        params={"tree_method": "hist", "max_depth": 3, "nthread": 1},
        num_rounds=5,
        seed=0,
        allowed_mrenclaves=[MRENCLAVE],
        outputs=["model"],
        recipients=[owners[0].recipient()],
        expires_at=int(time.time()) + 3600,
        id_column="id",
        proposer=owners[0].signing.verify_key.hex,
    )
    envelope = terms.sign(owners[0].signing)
    approvals = [Approval("job-1", envelope.digest).sign(o.signing).to_bytes() for o in owners]
    return enclave, owners, tables, sealed, terms, envelope, approvals


def test_a_fully_approved_job_trains_and_releases_to_the_named_recipient(world):
    enclave, owners, _tables, sealed, terms, envelope, approvals = world
    job = jobs.accept(enclave, envelope.to_bytes(), approvals, [m for m, _ in sealed])
    chunks = [(dataset_id, blob) for (dataset_id, _), (_, blob) in zip(terms.datasets, sealed)]
    items = list(jobs.run(enclave, job, chunks))
    statement = ResultStatement.verify(
        Envelope.from_bytes(items[-1]), enclave.signing_key.verify_key
    )
    assert statement.terms_digest == envelope.digest and statement.mrenclave == MRENCLAVE
    (_output,) = [i for i in items if isinstance(i, jobs.ReleasedOutput)]
    record = statement.outputs[0]
    assert set(record.wrapped_keys) == {owners[0].signing.verify_key.hex}
    with pytest.raises(IntegrityError):  # owner b is not a recipient: its key opens nothing
        hpke.unwrap_key(
            record.wrapped_keys[owners[0].signing.verify_key.hex],
            owners[1].hpke,
            hpke.result_key_info("job-1", "model", owners[1].hpke.public_key),
        )


def test_a_missing_approval_stops_the_job_before_any_data(world):
    enclave, _owners, _, sealed, _, envelope, approvals = world
    with pytest.raises(ConsentError, match="lacks the approval"):
        jobs.accept(enclave, envelope.to_bytes(), approvals[:1], [m for m, _ in sealed])


def test_an_approval_over_different_terms_is_refused(world):
    enclave, owners, _, sealed, terms, envelope, approvals = world
    other = JobTerms(**{**terms.__dict__, "num_rounds": 500}).sign(owners[0].signing)
    forged = Approval("job-1", other.digest).sign(owners[1].signing).to_bytes()
    with pytest.raises(ConsentError, match="different job terms"):
        jobs.accept(enclave, envelope.to_bytes(), [approvals[0], forged], [m for m, _ in sealed])


def test_a_manifest_signed_by_another_key_is_refused(world):
    enclave, owners, tables, sealed, _, envelope, approvals = world
    forged, _ = seal(enclave, owners[1], "b-data", tables[1], signer=owners[0].signing)
    with pytest.raises(SignatureError, match="not signed by its owner"):
        jobs.accept(enclave, envelope.to_bytes(), approvals, [sealed[0][0], forged])


def test_a_job_for_another_measurement_never_runs(world):
    enclave, _owners, _, sealed, _, envelope, approvals = world
    other = EnclaveIdentity(enclave.signing_key, enclave.hpke_key, "sim", "cd" * 32)
    with pytest.raises(ConsentError, match="does not allow this enclave's measurement"):
        jobs.accept(other, envelope.to_bytes(), approvals, [m for m, _ in sealed])


def test_expired_terms_are_refused(world):
    enclave, _, _, sealed, terms, envelope, approvals = world
    with pytest.raises(ConsentError, match="expired"):
        jobs.accept(
            enclave,
            envelope.to_bytes(),
            approvals,
            [m for m, _ in sealed],
            now=terms.expires_at + 1,
        )


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap"])
def test_tampered_ciphertext_is_refused_and_nothing_is_released(world, damage):
    enclave, _, _, sealed, terms, envelope, approvals = world
    job = jobs.accept(enclave, envelope.to_bytes(), approvals, [m for m, _ in sealed])
    blobs = [bytearray(b) for _, b in sealed]
    if damage == "flip":
        blobs[0][len(blobs[0]) // 2] ^= 1
    elif damage == "truncate":
        del blobs[0][-100:]
    else:
        blobs.reverse()
    chunks = [(dataset_id, bytes(blob)) for (dataset_id, _), blob in zip(terms.datasets, blobs)]
    released = []
    # Refused on intake (a chunk fails to open, or a data set is longer or shorter than
    # its signed manifest): nothing trains, nothing is released.
    with pytest.raises(IntegrityError, match="data set"):
        for item in jobs.run(enclave, job, chunks):
            released.append(item)
    assert not any(isinstance(i, (jobs.ReleasedOutput, bytes)) for i in released)


def test_the_model_equals_plaintext_xgboost_on_the_joined_rows(world):
    import xgboost as xgb

    enclave, owners, tables, sealed, terms, envelope, approvals = world
    job = jobs.accept(enclave, envelope.to_bytes(), approvals, [m for m, _ in sealed])
    chunks = [(dataset_id, blob) for (dataset_id, _), (_, blob) in zip(terms.datasets, sealed)]
    items = list(jobs.run(enclave, job, chunks))
    statement = ResultStatement.verify(
        Envelope.from_bytes(items[-1]), enclave.signing_key.verify_key
    )
    (output,) = [i for i in items if isinstance(i, jobs.ReleasedOutput)]
    me = owners[0]
    key = hpke.unwrap_key(
        statement.outputs[0].wrapped_keys[me.signing.verify_key.hex],
        me.hpke,
        hpke.result_key_info("job-1", "model", me.hpke.public_key),
    )
    model = xgb.Booster()
    model.load_model(bytearray(stream.open_stream(key, output.ciphertext, b"job-1/model")))
    joined = pa.concat_tables(tables)
    names = ["f0", "f1", "f2"]
    x = np.column_stack([joined.column(n).to_numpy().astype(np.float32) for n in names])
    y = joined.column("label").to_numpy().astype(np.float32)
    plain = xgb.train(
        terms.train_params(),
        xgb.DMatrix(x, label=y, feature_names=names),
        num_boost_round=terms.num_rounds,
    )
    probe = xgb.DMatrix(x, feature_names=names)
    assert np.array_equal(model.predict(probe), plain.predict(probe))


def _model_of(enclave, owner, items) -> bytes:
    statement = ResultStatement.verify(
        Envelope.from_bytes(items[-1]), enclave.signing_key.verify_key
    )
    (output,) = [i for i in items if isinstance(i, jobs.ReleasedOutput)]
    key = hpke.unwrap_key(
        statement.outputs[0].wrapped_keys[owner.signing.verify_key.hex],
        owner.hpke,
        hpke.result_key_info("job-1", "model", owner.hpke.public_key),
    )
    return stream.open_stream(key, output.ciphertext, b"job-1/model")


def test_data_sets_are_opened_as_they_arrive_in_any_order_and_pieces(world):
    enclave, owners, _tables, sealed, terms, envelope, approvals = world
    manifests = [m for m, _ in sealed]
    whole = list(
        jobs.run(
            enclave,
            jobs.accept(enclave, envelope.to_bytes(), approvals, manifests),
            [(d, blob) for (d, _), (_, blob) in zip(terms.datasets, sealed)],
        )
    )
    # 1000-byte pieces (sealed chunks are 4 KiB + 16), the two data sets taking turns.
    queues = [
        [(d, blob[i : i + 1000]) for i in range(0, len(blob), 1000)]
        for (d, _), (_, blob) in zip(terms.datasets, sealed)
    ]
    pieces = [p for pair in itertools.zip_longest(*queues) for p in pair if p is not None]
    consumed = []

    def arriving():
        for n, piece in enumerate(pieces, 1):
            consumed.append(n)
            yield piece

    job = jobs.accept(enclave, envelope.to_bytes(), approvals, manifests)
    items = []
    for item in jobs.run(enclave, job, arriving()):
        if isinstance(item, jobs.JobProgress) and item.kind == "intake":
            items.append((consumed[-1], item.text))
        else:
            items.append(item)
    reports = [i for i in items if isinstance(i, tuple)]
    # Reported (every tenth of each data set) while the rest was still to come.
    assert reports[0][0] < len(pieces) // 2, reports
    assert any("'a-data': received" in text and " of " in text for _, text in reports)
    done = [text for _, text in reports if "checked against its manifest" in text]
    assert [t.split(":")[0] for t in done] == ["data set 'b-data'", "data set 'a-data'"]
    assert "300 rows" in done[1] and "200 rows" in done[0]
    trained = [i for i in items if not isinstance(i, tuple)]
    assert _model_of(enclave, owners[0], trained) == _model_of(enclave, owners[0], whole)


def test_a_data_set_that_never_arrives_fails_the_job(world):
    enclave, _owners, _, sealed, terms, envelope, approvals = world
    job = jobs.accept(enclave, envelope.to_bytes(), approvals, [m for m, _ in sealed])
    only_a = [(terms.datasets[0][0], sealed[0][1])]
    with pytest.raises(IntegrityError, match="data set 'b-data' was not received"):
        list(jobs.run(enclave, job, only_a))
    half = [(terms.datasets[0][0], sealed[0][1][:5000])]
    job = jobs.accept(enclave, envelope.to_bytes(), approvals, [m for m, _ in sealed])
    with pytest.raises(IntegrityError, match="data set 'a-data' is 5000 bytes, its manifest says"):
        list(jobs.run(enclave, job, half))
