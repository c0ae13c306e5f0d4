"""What the coordinator knows of its enclave: checked by reading its RA-TLS certificate.

Every ``interval`` seconds a thread opens a TLS connection to the enclave,
reads its certificate and verifies the evidence in it against the
coordinator's enclave policy (:meth:`EnclaveClient.verify`): nothing is sent
to the enclave. The last outcome is what the dashboard shows: the backend,
MRENCLAVE/MRSIGNER, TCB status, when it last attested, and whether it was
reachable and trusted.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from coordinator.enclave_client import EnclaveClient, EnclaveNotTrusted
from protocols.errors import DetenteError

log = logging.getLogger(__name__)

CHECK_SECONDS = 10.0

# Health as the dashboard names it.
NOT_CHECKED = "not checked yet"
ATTESTED = "attested"
UNREACHABLE = "unreachable"
NOT_TRUSTED = "refused by the policy"


@dataclass(frozen=True)
class EnclaveStatus:
    address: str
    health: str
    backend: str = ""  # "SIMULATION", "SGX" or "TDX"
    simulation: bool = False
    mrenclave: str = ""
    mrsigner: str = ""
    tcb_status: str = ""
    last_attested_at: int | None = None  # ms
    last_checked_at: int | None = None  # ms
    problem: str = ""
    policy_allows_simulation: bool = False


class EnclaveMonitor:
    """Checks one enclave's certificate every ``interval`` seconds in a daemon thread."""

    def __init__(self, client: EnclaveClient, interval: float = CHECK_SECONDS) -> None:
        self._client = client
        self._interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._status = EnclaveStatus(
            client.address, NOT_CHECKED, policy_allows_simulation=client.policy.allow_simulation
        )
        self._thread = threading.Thread(target=self._run, name="dashboard-enclave", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    @property
    def status(self) -> EnclaveStatus:
        with self._lock:
            return self._status

    def check(self) -> EnclaveStatus:
        """Verify the enclave's certificate now; record and return the outcome."""
        from coordinator.store import now_ms

        before = self.status
        at = now_ms()
        try:
            _, enclave = self._client.verify()
        except EnclaveNotTrusted as exc:
            status = EnclaveStatus(
                before.address,
                NOT_TRUSTED,
                before.backend,
                before.simulation,
                before.mrenclave,
                before.mrsigner,
                before.tcb_status,
                before.last_attested_at,
                at,
                str(exc),
                before.policy_allows_simulation,
            )
        except DetenteError as exc:
            status = EnclaveStatus(
                before.address,
                UNREACHABLE,
                before.backend,
                before.simulation,
                before.mrenclave,
                before.mrsigner,
                before.tcb_status,
                before.last_attested_at,
                at,
                str(exc),
                before.policy_allows_simulation,
            )
        else:
            status = EnclaveStatus(
                address=before.address,
                health=ATTESTED,
                backend="SIMULATION" if enclave.simulation else enclave.quote.tee,
                simulation=enclave.simulation,
                mrenclave=enclave.mrenclave,
                mrsigner=enclave.mrsigner,
                tcb_status=" ".join([enclave.tcb.status, *enclave.tcb.advisory_ids]),
                last_attested_at=at,
                last_checked_at=at,
                policy_allows_simulation=before.policy_allows_simulation,
            )
        with self._lock:
            self._status = status
        return status

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # keep checking: the dashboard shows the last outcome
                log.exception("checking the enclave for the dashboard failed")
            self._stop.wait(self._interval)
