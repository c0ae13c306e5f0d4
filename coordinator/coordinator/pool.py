"""The worker pool: the enclave workers the coordinator runs jobs on.

Workers are registered by the operator (`detente coordinator serve --enclave
HOST:PORT`, repeatable, or `detente coordinator workers add HOST:PORT` while
it runs) and kept in the store. For each, a thread of this pool checks every
``interval`` seconds, over a channel pinned to the worker's RA-TLS
certificate:

- attestation: the certificate's evidence must pass the coordinator's enclave
  policy, when the worker is added, again every ``attest_every`` seconds and
  whenever its connection dropped (a restarted worker is attested anew); a
  worker that fails gets no job and no data, and the log and its record say
  which rule failed;
- health: the standard gRPC health service must answer SERVING for the
  Enclave service, and GetStatus gives its job slots, the jobs it runs and
  whether it is draining.

Only a SERVING worker with a free slot gets a new job (:meth:`WorkerPool.acquire`).
Each check's outcome is written to the store (the dashboard and `detente
coordinator workers` read it there); a change of attestation outcome is
also written to the audit log.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace

from coordinator.enclave_client import EnclaveClient, EnclaveNotTrusted
from coordinator.store import (
    Audit,
    CoordinatorStore,
    WorkerRecord,
    now_ms,
)
from coordinator.store.records import (
    NOT_SERVING,
    NOT_TRUSTED,
    SERVING,
    UNREACHABLE,
)
from protocols.errors import DetenteError, EnclaveUnavailable
from protocols.policy import AttestationPolicy

log = logging.getLogger(__name__)

CHECK_SECONDS = 2.0
ATTEST_SECONDS = 60.0
# A worker that has not answered for this long has lost the jobs it ran: their calls are
# given up and the jobs re-queued, even if no broken connection told the coordinator so.
LOST_SECONDS = 30.0
# A worker that answered WorkerBusy gets no job for this long (and until its next status),
# so a worker whose status keeps offering a slot it does not have is not tried in a loop.
BUSY_SECONDS = 5.0
# An unchanged check is written to the store at most this often (its last_seen moves on).
WRITE_SECONDS = 10.0
NO_WORKER = (
    "no enclave worker of this coordinator serves now: its operator checks them with "
    "`detente coordinator workers` (and adds one with `--enclave HOST:PORT` or "
    "`detente coordinator workers add HOST:PORT`); try again once one serves"
)


@dataclass(eq=False)
class PooledWorker:
    """A worker as the pool holds it: its client, its last check, the jobs it was given."""

    client: EnclaveClient
    record: WorkerRecord
    running: set[str] = field(default_factory=set)  # jobs this coordinator runs on it
    busy_until: float = 0.0  # it answered WorkerBusy: no job before then (time.monotonic())
    written: float = 0.0  # when its record was last written to the store
    identity: str = ""  # its enclave signing key (hex), from its last accepted evidence
    answered: float = field(default_factory=time.monotonic)  # when it last answered
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return self.client.address

    def free_slots(self) -> int:
        if self.record.health != SERVING or time.monotonic() < self.busy_until:
            return 0
        return max(0, self.record.slots - len(self.running | set(self.record.job_ids)))


class WorkerPool:
    """The registered workers, checked in the background; hands out free job slots."""

    def __init__(
        self,
        store: CoordinatorStore,
        policy: AttestationPolicy | None,
        interval: float = CHECK_SECONDS,
        attest_every: float = ATTEST_SECONDS,
    ) -> None:
        self._store = store
        self.policy = policy
        self._interval = interval
        self._attest_every = attest_every
        self._workers: dict[str, PooledWorker] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # registry ---------------------------------------------------------------

    def register(self, address: str, by: str = "the operator (--enclave)") -> WorkerRecord:
        """Add ``address`` to the pool (kept in the store); checked from now on."""
        if self.policy is None:
            raise EnclaveUnavailable(
                "a worker needs an attestation policy: start the coordinator with "
                "--enclave-policy FILE"
            )
        record, new = self._store.register_worker(address, by)
        if new:
            log.info("worker %s registered by %s", address, by)
        self._sync()
        return record

    def _sync(self) -> None:
        """Follow the store's list of workers (the operator adds and removes them there)."""
        if self.policy is None:
            return
        records = {r.address: r for r in self._store.list_workers()}
        with self._changed:
            for address in [a for a in self._workers if a not in records]:
                gone = self._workers.pop(address)
                gone.stop.set()
                gone.client.close()
                log.info("worker %s removed from the pool", address)
            for address, record in records.items():
                if address not in self._workers:
                    worker = PooledWorker(EnclaveClient(address, self.policy), record)
                    self._workers[address] = worker
                    if self._thread is not None:
                        self._start_checks(worker)
            self._changed.notify_all()

    def workers(self) -> list[PooledWorker]:
        """Every worker of the pool, healthy or not (for a request every worker must get)."""
        with self._changed:
            return list(self._workers.values())

    def clients(self) -> list[EnclaveClient]:
        """The clients of every worker of the pool, serving or not (for a message every
        worker must get, such as a withdrawal)."""
        with self._changed:
            return [w.client for w in self._workers.values()]

    def healthy_clients(self) -> list[EnclaveClient]:
        """The clients of the workers that serve now (attested and healthy)."""
        with self._changed:
            return [w.client for w in self._workers.values() if w.record.health == SERVING]

    def client_for(self, address: str) -> EnclaveClient | None:
        with self._changed:
            worker = self._workers.get(address)
            return None if worker is None else worker.client

    def record_of(self, address: str) -> WorkerRecord | None:
        """The worker's last check; checked again now if it did not serve then (it may
        have just started or come back)."""
        with self._changed:
            worker = self._workers.get(address)
        if worker is None:
            return None
        if worker.record.health != SERVING:
            return self.check(worker)
        return worker.record

    def any_client(self) -> EnclaveClient:
        """A serving worker's client (the least busy); EnclaveUnavailable if none serves.
        If none serves by its last check, each is checked again now (one may have just
        started or come back)."""
        if not self.healthy_clients():
            for worker in self.workers():
                self.check(worker)
        with self._changed:
            serving = [w for w in self._workers.values() if w.record.health == SERVING]
            refused = [w for w in self._workers.values() if w.record.health == NOT_TRUSTED]
        if serving:
            return max(serving, key=lambda w: w.free_slots()).client
        if refused:  # say why: the rule the worker failed
            raise EnclaveNotTrusted(refused[0].record.problem)
        raise EnclaveUnavailable(NO_WORKER)

    # slots ------------------------------------------------------------------

    def wait_free(self, stopping: threading.Event) -> bool:
        """Wait until some serving worker has a free slot; False once ``stopping`` is set."""
        with self._changed:
            while not stopping.is_set() and not self._stop.is_set():
                if any(w.free_slots() > 0 for w in self._workers.values()):
                    return True
                self._changed.wait(0.5)
        return False

    def acquire(self, job_id: str, stopping: threading.Event) -> PooledWorker | None:
        """Wait for a serving worker with a free slot and take the slot for ``job_id``
        (the worker with the most free slots); None once ``stopping`` is set."""
        with self._changed:
            while not stopping.is_set() and not self._stop.is_set():
                free = [w for w in self._workers.values() if w.free_slots() > 0]
                if free:
                    worker = max(free, key=lambda w: w.free_slots())
                    worker.running.add(job_id)
                    return worker
                self._changed.wait(0.5)
        return None

    def release(self, worker: PooledWorker, job_id: str) -> None:
        with self._changed:
            worker.running.discard(job_id)
            self._changed.notify_all()

    def mark_busy(self, worker: PooledWorker) -> None:
        """The worker answered WorkerBusy: no job to it for BUSY_SECONDS."""
        with self._changed:
            worker.busy_until = time.monotonic() + BUSY_SECONDS

    def mark_lost(self, worker: PooledWorker, reason: str) -> None:
        """A call to the worker broke: no job to it until a check finds it serving again
        (attested anew)."""
        with self._changed:
            worker.record = replace(worker.record, health=UNREACHABLE, problem=reason)
        worker.client.reattest()

    def silent_for(self, worker: PooledWorker) -> float:
        """Seconds since the worker last answered a check."""
        with self._changed:
            return time.monotonic() - worker.answered

    # checks -----------------------------------------------------------------

    def start(self) -> None:
        self._sync()
        self._thread = threading.Thread(target=self._follow, name="worker-pool", daemon=True)
        self._thread.start()
        with self._changed:
            for worker in self._workers.values():
                self._start_checks(worker)

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            workers = list(self._workers.values())
            self._changed.notify_all()
        for worker in workers:
            worker.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for worker in workers:
            if worker.thread is not None:
                worker.thread.join(timeout=20)
            worker.client.close()

    def _follow(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._sync()
            except Exception:  # the database may be briefly unavailable: try again
                log.exception("reading the list of workers failed")

    def _start_checks(self, worker: PooledWorker) -> None:
        worker.thread = threading.Thread(
            target=self._checks, args=(worker,), name=f"check-{worker.address}"[:32], daemon=True
        )
        worker.thread.start()

    def _checks(self, worker: PooledWorker) -> None:
        next_attestation = time.monotonic() + self._attest_every
        while not worker.stop.is_set() and not self._stop.is_set():
            if time.monotonic() >= next_attestation:
                worker.client.reattest()
                next_attestation = time.monotonic() + self._attest_every
            try:
                self.check(worker)
            except Exception:  # keep checking; the record keeps the last outcome
                log.exception("checking worker %s failed", worker.address)
            worker.stop.wait(self._interval)

    def check(self, worker: PooledWorker) -> WorkerRecord:
        """Attest (if due) and health-check ``worker`` now; store and return the outcome."""
        before = worker.record
        at = now_ms()
        audit = None
        try:
            status = worker.client.status()
        except EnclaveNotTrusted as exc:
            record = replace(
                before, health=NOT_TRUSTED, problem=str(exc), checked_at=at, job_ids=[], busy=0
            )
            if before.health != NOT_TRUSTED:
                log.warning(
                    "worker %s failed attestation, no job goes to it: %s", worker.address, exc
                )
                audit = Audit("worker.refused", worker.address, {"reason": str(exc)[:500]})
        except DetenteError as exc:
            record = replace(before, health=UNREACHABLE, problem=str(exc), checked_at=at)
            if before.health != UNREACHABLE:
                log.warning("worker %s unreachable: %s", worker.address, exc)
        else:
            record = replace(
                before,
                health=SERVING if status.serving and not status.draining else NOT_SERVING,
                problem="draining: it takes no new job" if status.draining else "",
                slots=status.slots,
                busy=status.busy,
                job_ids=status.job_ids,
                draining=status.draining,
                last_seen=at,
                checked_at=at,
            )
            record, audit = self._attested(worker, before, record)
            record = self._one_identity(worker, record)
        with self._changed:
            worker.record = record
            if record.last_seen == at:
                worker.answered = time.monotonic()
            self._changed.notify_all()
        if (
            audit is not None
            or _differs(before, record)
            or time.monotonic() > worker.written + WRITE_SECONDS
        ):
            self._store.record_worker_check(record, audit)
            worker.written = time.monotonic()
        return record

    def _one_identity(self, worker: PooledWorker, record: WorkerRecord) -> WorkerRecord:
        """The workers of a pool must share one enclave identity: parties seal their data
        keys to the identity they attested (through any worker), so a worker with another
        one would refuse their data. The first registered worker's identity is the pool's;
        a worker with another gets no job until it joins."""
        verified = worker.client.last_verified
        if verified is None or record.health != SERVING:
            return record
        worker.identity = verified[0].identity.signing_key.hex
        with self._changed:
            first = next((w for w in self._workers.values() if w.identity), worker)
        if first.identity == worker.identity:
            return record
        if record.problem != _other_identity(worker, first):
            log.warning(
                "worker %s has another enclave identity than worker %s: no job goes to it",
                worker.address,
                first.address,
            )
        return replace(record, health=NOT_SERVING, problem=_other_identity(worker, first))

    def _attested(
        self, worker: PooledWorker, before: WorkerRecord, record: WorkerRecord
    ) -> tuple[WorkerRecord, Audit | None]:
        """The record with the last evidence that passed the policy; an audit entry when
        the worker passes for the first time, again after a refusal, or as another
        enclave (a new MRENCLAVE or MRSIGNER)."""
        verified = worker.client.last_verified
        if verified is None:
            return record, None
        enclave, when = verified
        record = replace(
            record,
            backend="SIMULATION" if enclave.simulation else enclave.quote.tee,
            mrenclave=enclave.mrenclave,
            mrsigner=enclave.mrsigner,
            tcb_status=" ".join([enclave.tcb.status, *enclave.tcb.advisory_ids]),
            attested_at=int(when * 1000),
        )
        changed = (
            before.attested_at is None
            or before.health == NOT_TRUSTED
            or (before.mrenclave, before.mrsigner) != (record.mrenclave, record.mrsigner)
        )
        if not changed:
            return record, None
        log.info(
            "worker %s attested: %s MRENCLAVE %s…",
            worker.address,
            record.backend,
            record.mrenclave[:16],
        )
        detail = {
            "backend": record.backend,
            "mrenclave": record.mrenclave,
            "mrsigner": record.mrsigner,
            "tcb_status": record.tcb_status,
        }
        return record, Audit("worker.attested", worker.address, detail)


def _differs(before: WorkerRecord, after: WorkerRecord) -> bool:
    """Whether a check changed more than the times of the record."""
    return replace(before, last_seen=None, checked_at=None) != replace(
        after, last_seen=None, checked_at=None
    )


def _other_identity(worker: PooledWorker, first: PooledWorker) -> str:
    return (
        f"its enclave identity (signing key {worker.identity[:16]}…) is not the pool's "
        f"({first.identity[:16]}…, of worker {first.address}), so the parties' data sealed to "
        f"the pool would be refused there: start it from a fresh ENCLAVE_DIR with "
        f"`detente libos run DIR -- --join {first.address}` to share the pool's identity; it "
        "gets no job meanwhile"
    )


__all__ = ["CHECK_SECONDS", "LOST_SECONDS", "NOT_SERVING", "PooledWorker", "WorkerPool"]
