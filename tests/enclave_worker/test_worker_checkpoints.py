"""Checkpoints of the training loop (jobs.run): resuming gives the uninterrupted model.

The job code runs in-process here with checkpoints kept in a dict; the worker
test (test_worker_process.py) covers the encrypted mount and a real restart.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from worker_testkit import Job, Owner, make_job, make_table, plaintext_model, seal_job

from enclave_worker import jobs
from enclave_worker.identity import EnclaveIdentity
from protocols import hpke, stream
from protocols.documents import ResultStatement
from protocols.errors import IntegrityError
from protocols.keys import HpkePrivateKey, SigningKey
from protocols.statements import Envelope

MRENCLAVE = "ab" * 32
ROUNDS = 40  # a checkpoint every 4 rounds


class DictCheckpoints:
    """A CheckpointStore in memory that remembers every version written."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files = dict(files or {})
        self.history: list[bytes] = []

    def read(self, name: str) -> bytes | None:
        return self.files.get(name)

    def write(self, name: str, data: bytes) -> None:
        self.files[name] = data
        self.history.append(data)


@pytest.fixture(scope="module")
def enclave() -> EnclaveIdentity:
    return EnclaveIdentity(SigningKey.generate(), HpkePrivateKey.generate(), "sim", MRENCLAVE)


def _job(enclave: EnclaveIdentity, job_id: str, params: dict[str, Any]) -> Job:
    return make_job(
        enclave.hpke_key.public_key,
        MRENCLAVE,
        job_id,
        rows=600,
        rounds=ROUNDS,
        params={"tree_method": "hist", "max_depth": 4, "nthread": 1, **params},
        outputs=("model", "metrics"),
    )


def _run(
    enclave: EnclaveIdentity, job: Job, store: DictCheckpoints
) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    """Run the job's code; return its outputs opened by the recipient, and its progress."""
    accepted = jobs.accept(enclave, job.spec.terms, job.spec.approvals, job.spec.manifests)
    progress: list[tuple[str, str]] = []
    env = jobs.JobEnvironment(emit=lambda p: progress.append((p.kind, p.text)), checkpoints=store)
    items = list(jobs.run(enclave, accepted, job.blobs, env))
    statement = ResultStatement.verify(
        Envelope.from_bytes(items[-1]), enclave.signing_key.verify_key
    )
    me = job.owners[0]
    opened = {}
    for output, record in zip(
        [i for i in items if isinstance(i, jobs.ReleasedOutput)], statement.outputs, strict=True
    ):
        key = hpke.unwrap_key(
            record.wrapped_keys[me.signing.verify_key.hex],
            me.hpke,
            hpke.result_key_info(job.terms.job_id, output.name, me.hpke.public_key),
        )
        info = f"{job.terms.job_id}/{output.name}".encode()
        opened[output.name] = stream.open_stream(key, output.ciphertext, info)
    progress += [(i.kind, i.text) for i in items if isinstance(i, jobs.JobProgress)]
    return opened, progress


def _predictions(model_json: bytes, job: Job) -> Any:
    plain, x = plaintext_model(job)
    probe = xgb.DMatrix(x, feature_names=plain.feature_names)
    model = xgb.Booster()
    model.load_model(bytearray(model_json))
    return model.predict(probe), plain.predict(probe)


def test_resuming_from_any_checkpoint_gives_the_uninterrupted_model_and_metrics(enclave):
    job = _job(enclave, "job-ckpt", {})
    assert jobs.resumable(job.terms.train_params())
    store = DictCheckpoints()
    whole, progress = _run(enclave, job, store)
    ours, plain = _predictions(whole["model"], job)
    assert np.array_equal(ours, plain)
    # Every 4 rounds a checkpoint, then the finished model.
    assert len(store.history) == ROUNDS // 4
    assert [t for k, t in progress if k == "round"] == [
        f"round {r}/{ROUNDS}" for r in range(4, ROUNDS, 4)
    ]
    name = jobs.checkpoint_name(jobs.accept(enclave, *_spec(job)))
    for saved in (store.history[0], store.history[4], store.history[-2]):
        rounds = jobs.Checkpoint.from_bytes(saved, jobs.accept(enclave, *_spec(job))).rounds
        resumed, progress = _run(enclave, job, DictCheckpoints({name: saved}))
        assert ("checkpoint", f"resumed after round {rounds}/{ROUNDS}") in progress
        # Bit for bit: the model file and the metrics history of an uninterrupted run.
        assert resumed == whole


def _spec(job: Job) -> tuple[bytes, list[bytes], list[bytes]]:
    return job.spec.terms, job.spec.approvals, job.spec.manifests


def test_a_finished_model_is_reused_without_training_again(enclave):
    job = _job(enclave, "job-done", {})
    store = DictCheckpoints()
    whole, _ = _run(enclave, job, store)
    final = store.history[-1]
    again, progress = _run(enclave, job, DictCheckpoints(dict(store.files)))
    assert ("checkpoint", f"resumed after round {ROUNDS}/{ROUNDS}") in progress
    assert not [t for k, t in progress if k == "round"]  # no round was trained
    assert again == whole
    assert jobs.Checkpoint.from_bytes(final, jobs.accept(enclave, *_spec(job))).complete


def test_sampling_parameters_never_resume_mid_way(enclave):
    job = _job(enclave, "job-sampled", {"subsample": 0.8, "colsample_bytree": 0.7})
    assert not jobs.resumable(job.terms.train_params())
    assert not jobs.resumable({"booster": "dart"})
    assert not jobs.resumable({"subsample": "0.8"})  # not a number: assume the worst
    store = DictCheckpoints()
    whole, _ = _run(enclave, job, store)
    ours, plain = _predictions(whole["model"], job)
    assert np.array_equal(ours, plain)
    assert len(store.history) == 1  # only the finished model
    # A mid-way checkpoint (as an older worker could have left) is not used:
    # resuming would not continue the random stream, and the model would differ.
    accepted = jobs.accept(enclave, *_spec(job))
    partial = xgb.train(
        job.terms.train_params(), xgb.DMatrix(np.zeros((4, 3)), label=[0, 1, 0, 1]), 4
    )
    mid = jobs.Checkpoint(4, False, {}, bytes(partial.save_raw("ubj"))).to_bytes(accepted)
    again, progress = _run(enclave, job, DictCheckpoints({jobs.checkpoint_name(accepted): mid}))
    assert not [t for k, t in progress if k == "checkpoint"]
    assert again["model"] == whole["model"]


def test_a_checkpoint_of_other_terms_is_refused(enclave):
    first, other = _job(enclave, "job-one", {}), _job(enclave, "job-two", {})
    store = DictCheckpoints()
    _run(enclave, first, store)
    accepted = jobs.accept(enclave, *_spec(other))
    swapped = DictCheckpoints({jobs.checkpoint_name(accepted): store.history[0]})
    with pytest.raises(IntegrityError, match="belongs to other job terms"):
        _run(enclave, other, swapped)


def _fielded(enclave: EnclaveIdentity, job_id: str, **fields: Any) -> Job:
    owners = [Owner("a"), Owner("b")]
    return seal_job(
        enclave.hpke_key.public_key,
        MRENCLAVE,
        job_id,
        [(o, f"{job_id}-{o.name}", make_table(300, n + 1)) for n, o in enumerate(owners)],
        params={"tree_method": "hist", "max_depth": 4, "nthread": 1},
        num_rounds=ROUNDS,
        outputs=["model", "metrics"],
        id_column="id",
        **fields,
    )


def test_metrics_at_a_stride_resume_with_the_model(enclave):
    job = _fielded(enclave, "job-stride", metrics_every=3)
    store = DictCheckpoints()
    whole, _ = _run(enclave, job, store)
    metrics = json.loads(whole["metrics"])
    assert metrics["evaluated_rounds"] == [*range(3, ROUNDS, 3), ROUNDS]
    name = jobs.checkpoint_name(jobs.accept(enclave, *_spec(job)))
    for saved in (store.history[1], store.history[-2]):
        resumed, progress = _run(enclave, job, DictCheckpoints({name: saved}))
        assert any(kind == "checkpoint" for kind, _ in progress)
        assert resumed == whole  # the model and every evaluated point


def test_early_stopping_keeps_only_its_finished_model(enclave):
    job = _fielded(enclave, "job-early", validation_fraction=0.25, early_stopping_rounds=2)
    assert jobs.resumable(job.terms.train_params()) and not jobs.resumable_job(job.terms)
    store = DictCheckpoints()
    whole, _ = _run(enclave, job, store)
    assert len(store.history) == 1  # only the finished model
    finished = jobs.Checkpoint.from_bytes(store.history[0], jobs.accept(enclave, *_spec(job)))
    assert finished.complete
    again, progress = _run(enclave, job, DictCheckpoints(dict(store.files)))
    assert ("checkpoint", f"resumed after round {finished.rounds}/{ROUNDS}") in progress
    assert again == whole  # best iteration and validation curve included
    assert json.loads(again["metrics"])["best_iteration"] is not None
