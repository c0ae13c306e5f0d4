"""Telling every enclave worker about each withdrawn data set, until each acknowledged.

A withdrawal (protocols/SPEC.md §3.11) matters most to the workers: each one
that holds a checkpoint or a sealed model derived from the data set must
destroy it, and must refuse the data set from then on. The coordinator sends
the owner's signed statement with the manifest to every worker it knows
(``workers()``: each worker of the pool, serving or not) and records per
worker address whether it acknowledged. A worker that was
down, or failed, is sent it again on the next round, every
:data:`DELIVERY_INTERVAL` seconds, for as long as the coordinator runs (and
after a restart: the acknowledgements are in the database). A worker that
joins later gets every withdrawal made before it joined.

Delivery is the coordinator's duty, not a trust anchor: a coordinator that
never delivers leaves a worker's checkpoints in place, but it cannot make a
worker that got the statement forget it (the list is in the worker's
rollback-protected mount), and the data owner sees which workers acknowledged
(docs/threat-model.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from coordinator.enclave_client import EnclaveClient
from coordinator.store import CoordinatorStore, DatasetRecord, DeliveryRecord
from protocols.errors import DetenteError

log = logging.getLogger(__name__)

# Seconds between two rounds of re-sending withdrawals a worker has not acknowledged.
DELIVERY_INTERVAL = 2.0


class WithdrawalDelivery:
    """Sends each withdrawal to each known worker until it acknowledged; one thread."""

    def __init__(
        self,
        store: CoordinatorStore,
        workers: Callable[[], Sequence[EnclaveClient]],
        interval: float = DELIVERY_INTERVAL,
    ) -> None:
        self._store = store
        self._workers = workers
        self._interval = interval
        self._lock = threading.Lock()  # one round at a time
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="withdrawal-delivery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def deliver(self, dataset_id: str | None = None) -> None:
        """One round: send every unacknowledged withdrawal (of ``dataset_id`` only, if
        given) to each worker; record each answer."""
        with self._lock:
            pending = [
                d
                for d in self._store.withdrawn_datasets()
                if dataset_id is None or d.dataset_id == dataset_id
            ]
            if not pending:
                return
            acknowledged = {
                (r.dataset_id, r.worker)
                for r in self._store.deliveries()
                if r.delivered_at is not None
            }
            for worker in self._workers():
                for dataset in pending:
                    if (dataset.dataset_id, worker.address) not in acknowledged:
                        self._send(worker, dataset)

    def status(self, dataset_id: str) -> list[DeliveryRecord]:
        """Per known worker (and any other recorded), whether it acknowledged the withdrawal."""
        recorded = {r.worker: r for r in self._store.deliveries(dataset_id)}
        for worker in self._workers():
            recorded.setdefault(
                worker.address, DeliveryRecord(dataset_id, worker.address, None, 0, "")
            )
        return sorted(recorded.values(), key=lambda r: r.worker)

    def _send(self, worker: EnclaveClient, dataset: DatasetRecord) -> None:
        assert dataset.withdrawal is not None
        try:
            receipt = worker.withdraw_dataset(dataset.withdrawal, dataset.manifest)
        except DetenteError as exc:
            log.info(
                "withdrawal of %s not delivered to %s yet: %s",
                dataset.dataset_id,
                worker.address,
                type(exc).__name__,
            )
            self._store.record_delivery(dataset.dataset_id, worker.address, str(exc))
            return
        self._store.record_delivery(dataset.dataset_id, worker.address, None)
        log.info(
            "withdrawal of %s delivered to %s: %d checkpoint(s), %d model(s) destroyed, "
            "%d job(s) stopped",
            dataset.dataset_id,
            worker.address,
            receipt.checkpoints_removed,
            len(receipt.models_retired),
            receipt.jobs_stopped,
        )

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.deliver()
            except Exception:
                log.exception("withdrawal delivery round failed")
            self._wake.wait(self._interval)
            self._wake.clear()
