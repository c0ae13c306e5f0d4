"""Withdrawing a data set: what it stops, then the owner's signed withdrawal.

A data owner withdraws a data set it uploaded (protocols/SPEC.md §3.11). The
party signs a dataset withdrawal with the key that signed the manifest, over
the data set id and the digest of that manifest (fetched and verified here:
it must be this party's own). The coordinator deletes the ciphertext, cancels
the jobs waiting on it, stops a running one and passes the statement to every
enclave worker, each of which refuses the data set from then on and destroys
the checkpoints and sealed models derived from it. The answer says, per
worker, whether it acknowledged; the coordinator re-sends to a worker that
missed it, and withdrawing again shows the acknowledgements so far.

Nothing can undo a withdrawal: to use the data again, upload it as a new
data set (a new id, a new key).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from party_client.datasets import fetch_manifest
from party_client.home import PartyHome
from party_client.job_control import jobs
from party_client.remote import Coordinator, connected
from protocols.documents import DatasetManifest, DatasetWithdrawal
from protocols.errors import ConsentError, DetenteError, IntegrityError
from protocols.statements import Envelope

# The jobs a withdrawal stops: those not finished (a failed one cannot be retried after it).
STOPPED_STATES = ("proposed", "approved", "running")


@dataclass(frozen=True)
class AffectedJob:
    """A job that names the data set and has not finished: the withdrawal cancels it."""

    job_id: str
    state: str


@dataclass(frozen=True)
class WithdrawalPlan:
    """What withdrawing ``dataset_id`` would do, before anything is signed."""

    dataset_id: str
    manifest_digest: str
    rows: int
    withdrawn_at: int  # ms since the epoch if already withdrawn; 0 otherwise
    jobs: list[AffectedJob]


@dataclass(frozen=True)
class WorkerAck:
    """Whether one enclave worker acknowledged the withdrawal (by the coordinator's record)."""

    worker: str
    delivered_at: int  # ms since the epoch; 0: not yet (the coordinator re-sends it)
    attempts: int
    error: str

    @property
    def acknowledged(self) -> bool:
        return self.delivered_at > 0


@dataclass(frozen=True)
class Withdrawn:
    """A withdrawn data set: when, the jobs it cancelled or stopped, each worker's answer."""

    dataset_id: str
    manifest_digest: str
    withdrawn_at: int  # ms since the epoch, by the coordinator's clock
    cancelled_jobs: list[str]
    workers: list[WorkerAck]

    @property
    def pending(self) -> list[WorkerAck]:
        """The workers that have not acknowledged it yet."""
        return [w for w in self.workers if not w.acknowledged]

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        for worker, ack in zip(doc["workers"], self.workers, strict=True):
            worker["acknowledged"] = ack.acknowledged
        return doc


def check_statement(withdrawal: bytes, manifest: bytes) -> DatasetWithdrawal:
    """The owner's withdrawal the coordinator lists with a data set, verified against its
    manifest (IntegrityError if it does not verify: the coordinator claims a withdrawal
    the owner never signed)."""
    try:
        doc, _ = DatasetWithdrawal.verify(
            Envelope.from_bytes(withdrawal, "dataset withdrawal"),
            Envelope.from_bytes(manifest, "dataset manifest"),
        )
    except DetenteError as exc:
        raise IntegrityError(
            f"the coordinator lists a data set as withdrawn without a valid withdrawal by its "
            f"owner ({exc}): refused"
        ) from None
    return doc


def _own_manifest(
    coordinator: Coordinator, home: PartyHome, dataset_id: str
) -> tuple[Envelope, DatasetManifest]:
    envelope, manifest = fetch_manifest(coordinator, dataset_id)
    if manifest.owner_key != home.signing_key().verify_key:
        raise ConsentError(
            f"data set {dataset_id!r} is owned by {manifest.owner_key.hex[:16]}…, not by you: "
            "only its owner withdraws it"
        )
    return envelope, manifest


def withdrawal_plan(
    home: PartyHome, dataset_id: str, *, remote: Coordinator | None = None
) -> WithdrawalPlan:
    """What withdrawing this party's data set ``dataset_id`` would cancel; nothing is sent.

    ConsentError if the data set is another party's.
    """
    with connected(home, remote) as coordinator:
        envelope, manifest = _own_manifest(coordinator, home, dataset_id)
        record = coordinator.dataset(dataset_id)
        affected = [
            AffectedJob(j.job_id, j.state)
            for j in jobs(home, remote=coordinator)
            if j.state in STOPPED_STATES and any(d == dataset_id for d, _ in j.terms.datasets)
        ]
    return WithdrawalPlan(
        dataset_id, envelope.digest, manifest.row_count, record.withdrawn_at, affected
    )


def withdraw(home: PartyHome, dataset_id: str, *, remote: Coordinator | None = None) -> Withdrawn:
    """Sign this owner's withdrawal of ``dataset_id`` and send it; what the coordinator did.

    The statement names the manifest this party signed (verified here), so a
    coordinator cannot turn it against another data set. Withdrawing an
    already withdrawn data set signs nothing new that matters: the
    coordinator keeps the first statement and reports the workers so far.
    """
    signing = home.signing_key()
    with connected(home, remote) as coordinator:
        envelope, _ = _own_manifest(coordinator, home, dataset_id)
        statement = DatasetWithdrawal(
            dataset_id, envelope.digest, signing.verify_key, int(time.time())
        ).sign(signing)
        done = coordinator.withdraw_dataset(dataset_id, statement.to_bytes())
    if done.dataset.dataset_id != dataset_id or not done.dataset.withdrawn_at:
        raise IntegrityError(
            f"the coordinator did not report data set {dataset_id!r} withdrawn: run "
            f"`detente party withdraw {dataset_id}` again"
        )
    return Withdrawn(
        dataset_id,
        envelope.digest,
        done.dataset.withdrawn_at,
        list(done.cancelled_jobs),
        [WorkerAck(d.worker, d.delivered_at, d.attempts, d.error) for d in done.deliveries],
    )
