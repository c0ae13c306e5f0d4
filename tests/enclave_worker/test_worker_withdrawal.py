"""A data owner's withdrawal at a real enclave worker (enclave_worker.withdrawals).

The worker runs as its own process; the test plays the coordinator (its real
EnclaveClient over RA-TLS) and, where it says so, the SIMULATED host that
opens the encrypted mount to look at what is kept (simulation only: its
platform secret is a host file).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from query_testkit import Enclave, enclave_of, query, refused, seal_query
from test_worker_sealed import customers
from test_worker_sealed_attacks import PARAMS, Parties, mount_of, rows, sealed
from worker_testkit import Job, Worker, build_worker_instance, collect, run_job, seal_job

from coordinator.enclave_client import EnclaveCallError
from protocols import statements
from protocols.documents import DatasetWithdrawal
from protocols.errors import FormatError, SignatureError
from protocols.statements import Envelope


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


@pytest.fixture(scope="module")
def parties() -> Parties:
    return Parties()


def released(enclave: Enclave, parties: Parties, job_id: str, rounds: int = 20) -> Job:
    """A horizontal job over a's and b's data that releases the model (checkpointed)."""
    return seal_job(
        enclave.hpke_key,
        enclave.mrenclave,
        job_id,
        [
            (parties.a, f"{job_id}-a", customers(300, 1, "binary:logistic")),
            (parties.b, f"{job_id}-b", customers(200, 2, "binary:logistic")),
        ],
        id_column="id",
        params=PARAMS,
        num_rounds=rounds,
    )


def withdrawal_of(job: Job, index: int, when: int | None = None) -> tuple[bytes, bytes]:
    """The owner's signed withdrawal of the job's ``index``-th data set, and its manifest."""
    manifest = job.spec.manifests[index]
    envelope = Envelope.from_bytes(manifest)
    dataset_id, digest = job.terms.datasets[index]
    owner = job.owners[index]
    doc = DatasetWithdrawal(dataset_id, digest, owner.signing.verify_key, when or int(time.time()))
    assert envelope.digest == digest
    return doc.sign(owner.signing).to_bytes(), manifest


def checkpoint_files(worker: Worker, job: Job) -> list[str]:
    prefix = f"checkpoints/{job.terms.job_id}/"
    return [p for p in mount_of(worker).files() if p.startswith(prefix)]


def test_a_withdrawal_shreds_checkpoints_and_the_enclave_refuses_the_data_for_good(
    worker, enclave, parties
):
    job = released(enclave, parties, "wd-release")
    outputs, _ = collect(run_job(worker, job))
    assert outputs["statement"] and outputs["model"]
    assert checkpoint_files(worker, job), "the finished model is kept as a checkpoint"

    withdrawal, manifest = withdrawal_of(job, 0)
    receipt = worker.client().withdraw_dataset(withdrawal, manifest)
    assert not receipt.already and receipt.checkpoints_removed == 1
    assert checkpoint_files(worker, job) == []
    files = mount_of(worker).files()
    digest = job.terms.datasets[0][1]
    assert f"withdrawals/datasets/{digest}" in files
    assert not any(p.startswith(f"withdrawals/derived/{job.terms.job_id}/") for p in files)

    # The host kept the ciphertext and the coordinator re-sends the same approved job:
    # the only key that opens it refuses, naming the withdrawn data set.
    with pytest.raises(EnclaveCallError) as refused:
        collect(run_job(worker, job))
    assert refused.value.code == "PERMISSION_DENIED"
    assert "'wd-release-a' was withdrawn by its owner" in refused.value.details
    # So is new terms over the same manifest, approved afresh.
    again = seal_job(
        enclave.hpke_key,
        enclave.mrenclave,
        "wd-release-2",
        [(parties.a, "wd-release-a", customers(300, 1, "binary:logistic"))],
        id_column="id",
        params=PARAMS,
    )
    again = replace(
        again,
        spec=replace(again.spec, manifests=[manifest]),
        blobs=[("wd-release-a", job.blobs[0][1])],
    )
    with pytest.raises(EnclaveCallError):
        collect(run_job(worker, again))

    # Idempotent: the same statement again changes nothing; so does a later one.
    assert worker.client().withdraw_dataset(withdrawal, manifest).already
    later, _ = withdrawal_of(job, 0, when=int(time.time()) + 60)
    assert worker.client().withdraw_dataset(later, manifest).already
    # The list survives a crash of the whole worker (it is in the rollback-protected mount).
    worker.kill()
    worker.start()
    with pytest.raises(EnclaveCallError) as refused:
        collect(run_job(worker, job))
    assert "withdrawn by its owner" in refused.value.details


def test_a_forged_altered_or_misdirected_withdrawal_is_refused_and_records_nothing(
    worker, enclave, parties
):
    job = released(enclave, parties, "wd-forged", rounds=5)
    collect(run_job(worker, job))
    withdrawal, manifest = withdrawal_of(job, 0)
    envelope = Envelope.from_bytes(withdrawal)
    client = worker.client()

    # b signs a withdrawal of a's data set.
    dataset_id, digest = job.terms.datasets[0]
    by_b = DatasetWithdrawal(dataset_id, digest, parties.b.signing.verify_key, int(time.time()))
    with pytest.raises(SignatureError, match="only the owner that signed the manifest"):
        client.withdraw_dataset(by_b.sign(parties.b.signing).to_bytes(), manifest)
    # b's signature put under a's name.
    forged = replace(
        envelope,
        signature=parties.b.signing.sign(statements.pae(envelope.payload_type, envelope.payload)),
    )
    with pytest.raises(SignatureError, match="altered or forged"):
        client.withdraw_dataset(forged.to_bytes(), manifest)
    # One byte of the payload changed.
    tampered = replace(envelope, payload=envelope.payload.replace(b'"version":1', b'"version":2'))
    with pytest.raises(SignatureError):
        client.withdraw_dataset(tampered.to_bytes(), manifest)
    # A's real withdrawal of this data set sent with b's manifest (another data set).
    with pytest.raises((SignatureError, FormatError)):
        client.withdraw_dataset(withdrawal, job.spec.manifests[1])

    assert not any(
        p.startswith("withdrawals/datasets/") and digest in p for p in mount_of(worker).files()
    )
    assert checkpoint_files(worker, job), "nothing was destroyed"
    outputs, _ = collect(run_job(worker, job))  # the data set still trains
    assert outputs["statement"]


def test_a_sealed_model_trained_on_a_withdrawn_data_set_is_destroyed(worker, enclave, parties):
    job = sealed(worker, enclave, parties, "wd-sealed")
    answer, _ = query(worker, enclave, parties.q, "wd-sealed", rows(5))
    assert answer.rows == 5
    withdrawal, manifest = withdrawal_of(job, 1)  # b withdraws; a's model goes too
    receipt = worker.client().withdraw_dataset(withdrawal, manifest)
    assert receipt.models_retired == ["wd-sealed"]
    files = mount_of(worker).files()
    assert "models/wd-sealed/retired" in files
    assert not any(
        p.startswith("models/wd-sealed/") and p != "models/wd-sealed/retired" for p in files
    )
    assert not any(p.startswith("checkpoints/wd-sealed/") for p in files)
    refusal = refused(worker, seal_query(enclave, parties.q, "wd-sealed", rows(5)))
    assert refusal.code == "FAILED_PRECONDITION"
    assert "withdrew data set 'wd-sealed-b'" in refusal.details


def test_a_running_job_on_the_data_set_is_stopped(worker, enclave, parties):
    job = released(enclave, parties, "wd-running", rounds=100_000)
    messages = run_job(worker, job)
    seen = 0
    started = time.monotonic()
    with pytest.raises(EnclaveCallError) as stopped:
        for message in messages:
            if getattr(message, "kind", "") == "round":
                seen += 1
                if seen == 1:
                    withdrawal, manifest = withdrawal_of(job, 0)
                    receipt = worker.client().withdraw_dataset(withdrawal, manifest)
                    assert receipt.jobs_stopped == 1
            assert time.monotonic() - started < 300
    assert stopped.value.code == "ABORTED"
    assert seen >= 1
    assert checkpoint_files(worker, job) == []
    assert not worker.job_processes(), "the job's process is gone"


def test_a_worker_that_joins_the_pool_later_refuses_what_the_pool_withdrew(
    worker, enclave, parties, tmp_path
):
    """The joiner gets the pool's keys, which open the data: its withdrawn list comes with
    them, so a host that starts a fresh worker cannot run a withdrawn data set on it."""
    from test_worker_join import _copy_build

    from libos import launcher
    from libos.sim import SimPlatform

    job = released(enclave, parties, "wd-joined", rounds=5)
    collect(run_job(worker, job))
    withdrawal, manifest = withdrawal_of(job, 0)
    worker.client().withdraw_dataset(withdrawal, manifest)

    b_dir = _copy_build(worker.instance, tmp_path / "b", worker.measured)
    a_root = SimPlatform(launcher.platform_dir(worker.instance)).root_fingerprint
    b_root = SimPlatform(launcher.platform_dir(b_dir)).root_fingerprint
    worker.stop()  # A now trusts B's simulated machine
    worker.args = ("--pool-simulation-root", b_root)
    worker.start()
    joiner = Worker(
        b_dir, worker.measured, ("--join", worker.address, "--pool-simulation-root", a_root)
    )
    try:
        joiner.start()
        assert enclave_of(joiner).signing_key == enclave.signing_key  # the pool's identity
        digest = job.terms.datasets[0][1]
        assert f"withdrawals/datasets/{digest}" in mount_of(joiner).files()
        with pytest.raises(EnclaveCallError) as refused:
            collect(run_job(joiner, job))  # the host kept the ciphertext
        assert refused.value.code == "PERMISSION_DENIED"
        assert "'wd-joined-a' was withdrawn by its owner" in refused.value.details
        # The data set that was not withdrawn trains on the joiner.
        fine = seal_job(
            enclave.hpke_key,
            enclave.mrenclave,
            "wd-joined-b",
            [(parties.b, "wd-joined-b2", customers(200, 2, "binary:logistic"))],
            id_column="id",
            params=PARAMS,
        )
        outputs, _ = collect(run_job(joiner, fine))
        assert outputs["statement"]
    finally:
        joiner.stop()
