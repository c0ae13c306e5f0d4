"""The SQLAlchemy ORM rows: the database schema of the coordinator's state."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class PartyRow(Base):
    __tablename__ = "parties"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    signing_key: Mapped[str] = mapped_column(String(64), unique=True)
    hpke_key: Mapped[str] = mapped_column(Text)  # a PQ key is 2436 hex characters
    registration: Mapped[bytes] = mapped_column(LargeBinary)
    registered_at: Mapped[int] = mapped_column(BigInteger)


class EnrollmentRow(Base):
    __tablename__ = "enrollments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    used_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    used_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class DatasetRow(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(128), unique=True)
    owner_key: Mapped[str] = mapped_column(String(64), index=True)
    manifest: Mapped[bytes] = mapped_column(LargeBinary)
    manifest_digest: Mapped[str] = mapped_column(String(64))
    blob_sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    # The owner's withdrawal (protocols/SPEC.md §3.11): when, and the signed statement.
    withdrawn_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    withdrawal: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class WithdrawalDeliveryRow(Base):
    """Whether an enclave worker acknowledged a withdrawal; re-sent until it did."""

    __tablename__ = "withdrawal_deliveries"
    __table_args__ = (UniqueConstraint("dataset_id", "worker"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.dataset_id"), index=True)
    worker: Mapped[str] = mapped_column(String(256))
    delivered_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(128), unique=True)
    terms: Mapped[bytes] = mapped_column(LargeBinary)
    terms_digest: Mapped[str] = mapped_column(String(64))
    proposer: Mapped[str] = mapped_column(String(64))
    dataset_ids: Mapped[str] = mapped_column(Text)  # JSON list, terms order
    required_approvers: Mapped[str] = mapped_column(Text)  # JSON list of hex keys
    recipients: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of hex keys
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cancel_reason: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    result_statement: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # A data owner's signed rejection (rejection.v1), once the job is rejected.
    rejection: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # The worker (HOST:PORT) running the job now, or that ran it last; empty before any.
    worker: Mapped[str] = mapped_column(String(255), default="", server_default="")
    # Workers lost while running it since a party last acted (a loss re-queues the job;
    # too many fail it, naming `detente party retry`).
    worker_losses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ApprovalRow(Base):
    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("job_id", "approver"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id"), index=True)
    approver: Mapped[str] = mapped_column(String(64))
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    at: Mapped[int] = mapped_column(BigInteger)


class OutputRow(Base):
    __tablename__ = "outputs"
    __table_args__ = (UniqueConstraint("job_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    blob_sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class JobEventRow(Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id"), index=True)
    at: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)


class SealedModelRow(Base):
    """A model kept in the enclave (docs/protocol.md §7); its id is the job id."""

    __tablename__ = "sealed_models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(String(128), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id"), unique=True)
    terms_digest: Mapped[str] = mapped_column(String(64))
    owners: Mapped[str] = mapped_column(Text)  # JSON list of hex keys, the job's approvers
    queriers: Mapped[str] = mapped_column(Text)  # JSON list of hex keys, terms order
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(BigInteger)
    retired_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The worker whose encrypted mount keeps the model (queries and retirement go there);
    # empty for a model sealed before the coordinator had a worker pool.
    worker: Mapped[str] = mapped_column(String(255), default="", server_default="")


class ModelRetirementRow(Base):
    __tablename__ = "model_retirements"
    __table_args__ = (UniqueConstraint("model_id", "owner"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("sealed_models.model_id"), index=True)
    owner: Mapped[str] = mapped_column(String(64))
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    at: Mapped[int] = mapped_column(BigInteger)


class ModelQueriesRow(Base):
    """Queries the coordinator relayed and saw answered, per model and querier.

    Informative only: the enclave counts the budget itself, in its
    rollback-protected file system.
    """

    __tablename__ = "model_queries"
    __table_args__ = (UniqueConstraint("model_id", "querier"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("sealed_models.model_id"), index=True)
    querier: Mapped[str] = mapped_column(String(64))
    queries: Mapped[int] = mapped_column(BigInteger, default=0)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)


class WorkerRow(Base):
    """An enclave worker of the pool: registered by the operator, attested and checked
    by the coordinator (docs/operations.md, worker pool). Public facts only."""

    __tablename__ = "workers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(255), unique=True)  # HOST:PORT
    registered_at: Mapped[int] = mapped_column(BigInteger)
    health: Mapped[str] = mapped_column(String(32))
    problem: Mapped[str] = mapped_column(Text, default="")
    backend: Mapped[str] = mapped_column(String(16), default="")
    mrenclave: Mapped[str] = mapped_column(String(96), default="")
    mrsigner: Mapped[str] = mapped_column(String(64), default="")
    tcb_status: Mapped[str] = mapped_column(Text, default="")
    attested_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    slots: Mapped[int] = mapped_column(Integer, default=0)
    busy: Mapped[int] = mapped_column(Integer, default=0)
    job_ids: Mapped[str] = mapped_column(Text, default="[]")  # JSON list, as the worker said
    draining: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seen: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    checked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AuditRow(Base):
    __tablename__ = "audit_log"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[int] = mapped_column(BigInteger)
    event: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(128))
    detail: Mapped[str] = mapped_column(Text)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The coordinator's signature of (seq, hash) as the head (protocols.audit_head);
    # empty for entries written before heads were signed, or by a store with no key.
    head_signature: Mapped[bytes] = mapped_column(LargeBinary, default=b"", server_default="")


class RequestNonceRow(Base):
    """A signed request's nonce, kept until its signature's window has passed
    (protocols/SPEC.md §14): in the database, so a request captured before a
    restart is still refused after it."""

    __tablename__ = "request_nonces"
    signer: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    forget_after: Mapped[int] = mapped_column(BigInteger, index=True)  # Unix seconds


class PartialUploadRow(Base):
    """A resumable upload not yet complete (docs/protocol.md §3): what the owner signed,
    and how many ciphertext bytes the coordinator holds, synced, in its temporary file
    (``temp_name`` in the blob folder). Never a data set: nothing lists or uses it."""

    __tablename__ = "partial_uploads"
    upload_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(128), unique=True)
    owner_key: Mapped[str] = mapped_column(String(64), index=True)
    manifest: Mapped[bytes] = mapped_column(LargeBinary)
    manifest_digest: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)  # the manifest's ciphertext_size
    received: Mapped[int] = mapped_column(BigInteger)  # bytes synced to the temp file
    temp_name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger, index=True)
