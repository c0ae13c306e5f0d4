"""The coordinator's state: records, tables, the audit chain and the SQL store.

Everything here is public, ciphertext metadata, or a signed statement; the
store holds no plaintext and no secret. ``records`` holds the frozen values
handed to the handler, ``tables`` the ORM rows (which never leave the store),
``audit`` the hash-chained audit log and its one check
(:func:`verify_audit_chain`), ``interface`` what the handler needs
(:class:`CoordinatorStore`) and ``sql`` the implementation (:class:`SqlStore`),
its core mixed with one module per part: ``sql_jobs``, ``sql_models``,
``sql_audit``, ``sql_pool``, ``uploads`` and ``withdrawals``.
"""

from coordinator.store.audit import (
    GENESIS_HASH,
    Audit,
    AuditEntry,
    audit_hash,
    next_entry,
    verify_audit_chain,
)
from coordinator.store.interface import CoordinatorStore
from coordinator.store.records import (
    APPROVED,
    CANCELLED,
    FAILED,
    FINISHED_STATES,
    JOB_STATES,
    MODEL_STATES,
    PROPOSED,
    REJECTED,
    RETIRED,
    RUNNING,
    SEALED,
    SUCCEEDED,
    ApprovalRecord,
    DatasetRecord,
    DeliveryRecord,
    EnrollmentRecord,
    EventRecord,
    JobRecord,
    ModelRecord,
    PartyRecord,
    QueryCount,
    RetirementRecord,
    StoredOutput,
    WorkerRecord,
    now_ms,
)
from coordinator.store.sql import SqlStore
from coordinator.store.uploads import PartialUpload
from coordinator.store.withdrawals import withdrawal_reason

__all__ = [
    "APPROVED",
    "CANCELLED",
    "FAILED",
    "FINISHED_STATES",
    "GENESIS_HASH",
    "JOB_STATES",
    "MODEL_STATES",
    "PROPOSED",
    "REJECTED",
    "RETIRED",
    "RUNNING",
    "SEALED",
    "SUCCEEDED",
    "ApprovalRecord",
    "Audit",
    "AuditEntry",
    "CoordinatorStore",
    "DatasetRecord",
    "DeliveryRecord",
    "EnrollmentRecord",
    "EventRecord",
    "JobRecord",
    "ModelRecord",
    "PartialUpload",
    "PartyRecord",
    "QueryCount",
    "RetirementRecord",
    "SqlStore",
    "StoredOutput",
    "WorkerRecord",
    "audit_hash",
    "next_entry",
    "now_ms",
    "verify_audit_chain",
    "withdrawal_reason",
]
