"""CoordinatorHandler: the one object the servicer calls, over registry, datasets and jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from coordinator.blobs import BlobStore
from coordinator.enclave_client import PredictMessage, RelayedEvidence
from coordinator.handler.datasets import Datasets, Withdrawn
from coordinator.handler.jobs import Jobs
from coordinator.handler.models import Models
from coordinator.handler.registry import Registry
from coordinator.handler.uploads import Uploads, UploadState
from coordinator.limits import JobLimits
from coordinator.pool import WorkerPool
from coordinator.scheduler import Scheduler
from coordinator.store import (
    AuditEntry,
    CoordinatorStore,
    DatasetRecord,
    JobRecord,
    ModelRecord,
    PartyRecord,
)
from coordinator.withdrawals import WithdrawalDelivery
from protocols.errors import InvalidRequest

# Most audit entries one ListAuditEntries reply carries; a party asks again for more.
AUDIT_PAGE = 1000

NONCE_SIZE = 32


class CoordinatorHandler:
    """Registry, dataset intake, job state machine; hands approved jobs to the scheduler.

    Every method that reads or changes a party's data takes the ``caller``: the
    key that signed the request (checked by :mod:`coordinator.auth`). A party
    sees its own data sets, the jobs it takes part in (as proposer, data owner
    or recipient) and the public metadata of a data set whose id it names;
    outputs go to recipients only. A sealed model is seen by its owners and
    queriers; queriers query it, owners retire it.
    """

    def __init__(
        self,
        store: CoordinatorStore,
        blobs: BlobStore,
        pool: WorkerPool,
        limits: JobLimits | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.pool = pool
        self.limits = limits or JobLimits()
        self.scheduler = Scheduler(store, blobs, pool, self.limits)
        self.registry = Registry(store)
        # Every worker of the pool gets each withdrawal, serving or not (one that is down
        # gets it once it is back).
        self.withdrawals = WithdrawalDelivery(store, pool.clients)
        self.datasets = Datasets(store, blobs, self.withdrawals)
        self.uploads = Uploads(store, blobs)
        self.jobs = Jobs(store, blobs, self.scheduler, self.limits)
        self.models = Models(store, pool)

    def start(self) -> None:
        """Start checking the workers and the scheduler; re-queue jobs interrupted by a
        restart (and drop unfinished uploads that expired meanwhile)."""
        self.datasets.finish_withdrawals()
        self.uploads.expire()
        self.pool.start()
        self.scheduler.start()
        self.scheduler.recover()
        self.withdrawals.start()

    def stop(self) -> None:
        self.withdrawals.stop()
        self.scheduler.stop()
        self.pool.stop()

    # parties --------------------------------------------------------------

    def register_party(self, registration: bytes, enrollment_token: str = "") -> PartyRecord:
        return self.registry.register_party(registration, enrollment_token)

    def list_parties(self, caller: str) -> list[PartyRecord]:
        return self.registry.list_parties(caller)

    # evidence -------------------------------------------------------------

    def get_evidence(self, nonce: bytes) -> RelayedEvidence:
        if len(nonce) != NONCE_SIZE:
            raise InvalidRequest(
                f"an attestation nonce is {NONCE_SIZE} fresh random bytes, got {len(nonce)}"
            )
        # Any serving worker: the workers of a pool share one enclave identity.
        return self.pool.any_client().get_evidence(nonce)

    # datasets -------------------------------------------------------------

    def upload_dataset(
        self, caller: str, manifest: bytes, ciphertext: Iterable[bytes]
    ) -> DatasetRecord:
        return self.datasets.upload_dataset(caller, manifest, ciphertext)

    def begin_upload(self, caller: str, manifest: bytes) -> UploadState:
        return self.uploads.begin(caller, manifest)

    def send_upload(
        self, caller: str, upload_id: str, offset: int, ciphertext: Iterable[bytes]
    ) -> UploadState:
        return self.uploads.send(caller, upload_id, offset, ciphertext)

    def list_datasets(self, caller: str) -> list[DatasetRecord]:
        return self.datasets.list_datasets(caller)

    def get_dataset(self, caller: str, dataset_id: str) -> DatasetRecord:
        return self.datasets.get_dataset(caller, dataset_id)

    def withdraw_dataset(self, caller: str, dataset_id: str, withdrawal: bytes) -> Withdrawn:
        return self.datasets.withdraw_dataset(caller, dataset_id, withdrawal)

    # jobs -----------------------------------------------------------------

    def propose_job(self, caller: str, terms: bytes) -> JobRecord:
        return self.jobs.propose_job(caller, terms)

    def approve_job(self, caller: str, job_id: str, approval: bytes) -> JobRecord:
        return self.jobs.approve_job(caller, job_id, approval)

    def get_job(self, caller: str, job_id: str) -> JobRecord:
        return self.jobs.get_job(caller, job_id)

    def list_jobs(self, caller: str) -> list[JobRecord]:
        return self.jobs.list_jobs(caller)

    def reject_job(self, caller: str, job_id: str, rejection: bytes) -> JobRecord:
        return self.jobs.reject_job(caller, job_id, rejection)

    def cancel_job(self, caller: str, job_id: str, reason: str) -> JobRecord:
        return self.jobs.cancel_job(caller, job_id, reason)

    def retry_job(self, caller: str, job_id: str) -> JobRecord:
        return self.jobs.retry_job(caller, job_id)

    def fetch_output(self, caller: str, job_id: str, name: str) -> Iterator[bytes]:
        return self.jobs.fetch_output(caller, job_id, name)

    # sealed models --------------------------------------------------------

    def get_model(self, caller: str, model_id: str) -> ModelRecord:
        return self.models.visible_model(caller, model_id)

    def list_models(self, caller: str) -> list[ModelRecord]:
        return self.models.list_models(caller)

    # audit ----------------------------------------------------------------

    def audit_entries(self, first: int, last: int) -> list[AuditEntry]:
        """Entries ``first``..``last`` (0: to the end), at most AUDIT_PAGE of them.

        Any registered party reads them: they hold ids, keys and digests only,
        and a party needs them to check the log it was shown was not rewritten.
        """
        if first < 1 or (last and last < first):
            raise InvalidRequest(f"audit entries {first}..{last}: first ≥ 1 and last ≥ first")
        end = first + AUDIT_PAGE - 1
        return self.store.audit_entries(first, min(last, end) if last else end)

    def predict(
        self,
        caller: str,
        query: bytes,
        chunks: Iterable[bytes],
        on_start: Callable[[Callable[[], object]], object] | None = None,
        timeout: float | None = None,
    ) -> Iterator[PredictMessage]:
        return self.models.predict(caller, query, chunks, on_start, timeout)

    def retire_model(self, caller: str, model_id: str, retirement: bytes) -> ModelRecord:
        return self.models.retire_model(caller, model_id, retirement)
