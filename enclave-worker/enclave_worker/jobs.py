"""Run one job inside the enclave: consent, intake, join, train, release (DESIGN.md §3.5–3.6).

Consent is checked from the job spec alone, before a byte of data is read:
the terms must be signed by their proposer, allow this enclave's measurement
and not be expired; each data set's manifest must be the one the terms name,
signed by its owner and sealed to this enclave; and every owner must have
approved these exact terms. Only then are data keys unwrapped.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from enclave_worker.identity import EnclaveIdentity
from protocols import canonical, hpke, stream
from protocols.documents import (
    DatasetManifest,
    JobTerms,
    OutputRecord,
    ResultStatement,
    check_approvals,
    schema_sha256,
)
from protocols.errors import ConsentError, DatasetError, FormatError, IntegrityError
from protocols.statements import Envelope

log = logging.getLogger("enclave_worker.jobs")

# Parameters the terms may not set: the enclave decides where threads and files go.
_FORBIDDEN_PARAMS = {"device", "tree_method_gpu", "model_out", "model_in", "save_period"}


@dataclass
class Progress:
    kind: str
    text: str


@dataclass
class ReleasedOutput:
    name: str
    ciphertext: bytes


@dataclass
class AcceptedJob:
    """A job whose consent checks passed; data sets may now be received."""

    terms_envelope: Envelope
    terms: JobTerms
    manifests: dict[str, DatasetManifest]
    received: dict[str, bytearray] = field(default_factory=dict)

    def add_chunk(self, dataset_id: str, data: bytes) -> None:
        manifest = self.manifests.get(dataset_id)
        if manifest is None:
            raise ConsentError(f"data set {dataset_id!r} is not part of job {self.terms.job_id!r}")
        buffer = self.received.setdefault(dataset_id, bytearray())
        if len(buffer) + len(data) > manifest.ciphertext_size:
            raise IntegrityError(
                f"data set {dataset_id!r} is longer than its signed manifest says "
                f"({manifest.ciphertext_size} bytes)"
            )
        buffer += data


def accept(
    identity: EnclaveIdentity,
    terms_bytes: bytes,
    approvals: list[bytes],
    manifests: list[bytes],
    now: float | None = None,
) -> AcceptedJob:
    """Check consent for a job, or raise ConsentError/SignatureError/FormatError."""
    terms_envelope = Envelope.from_bytes(terms_bytes, "job terms")
    terms = JobTerms.verify(terms_envelope)
    now = time.time() if now is None else now
    if terms.expires_at <= now:
        raise ConsentError(f"job {terms.job_id!r} expired at {terms.expires_at}: propose it again")
    if identity.mrenclave not in terms.allowed_mrenclaves:
        raise ConsentError(
            f"job {terms.job_id!r} does not allow this enclave's measurement {identity.mrenclave}"
        )
    bad = _FORBIDDEN_PARAMS & set(terms.params)
    if bad:
        raise ConsentError(f"job terms set parameters the enclave controls: {sorted(bad)}")
    by_id: dict[str, tuple[Envelope, DatasetManifest]] = {}
    for raw in manifests:
        envelope = Envelope.from_bytes(raw, "dataset manifest")
        manifest = DatasetManifest.verify(envelope)
        by_id[manifest.dataset_id] = (envelope, manifest)
    accepted: dict[str, DatasetManifest] = {}
    for dataset_id, digest in terms.datasets:
        if dataset_id not in by_id:
            raise ConsentError(f"no signed manifest was given for data set {dataset_id!r}")
        envelope, manifest = by_id[dataset_id]
        if envelope.digest != digest:
            raise ConsentError(
                f"the manifest of data set {dataset_id!r} is not the one the job terms name"
            )
        if manifest.sealed_to_mrenclave != identity.mrenclave:
            raise ConsentError(
                f"data set {dataset_id!r} was sealed to another enclave measurement "
                f"({manifest.sealed_to_mrenclave[:16]}…)"
            )
        if identity.hpke_private_key_for(manifest.sealed_to_hpke_key) is None:
            raise ConsentError(f"data set {dataset_id!r} was sealed to another enclave key")
        accepted[dataset_id] = manifest
    owners = {m.owner_key for m in accepted.values()}
    check_approvals(
        terms_envelope, owners, [Envelope.from_bytes(a, "job approval") for a in approvals]
    )
    log.info("job %s accepted: %d data sets, all owners approved", terms.job_id, len(accepted))
    return AcceptedJob(terms_envelope, terms, accepted)


def _open_dataset(identity: EnclaveIdentity, manifest: DatasetManifest, blob: bytes) -> Any:
    import pyarrow as pa

    if len(blob) != manifest.ciphertext_size:
        raise IntegrityError(
            f"data set {manifest.dataset_id!r} is {len(blob)} bytes, its manifest says "
            f"{manifest.ciphertext_size}: it was truncated or extended"
        )
    if hashlib.sha256(blob).hexdigest() != manifest.ciphertext_sha256:
        raise IntegrityError(
            f"data set {manifest.dataset_id!r} does not match the digest in its signed manifest"
        )
    # The manifest names which of the enclave's keys (X25519 or post-quantum) it used.
    own = manifest.sealed_to_hpke_key
    private = identity.hpke_private_key_for(own)
    if private is None:
        raise ConsentError(f"data set {manifest.dataset_id!r} was sealed to another enclave key")
    key = hpke.unwrap_key(
        manifest.wrapped_key, private, hpke.data_key_info(manifest.dataset_id, own)
    )
    plaintext = stream.open_stream(key, blob, manifest.dataset_id.encode())
    try:
        table = pa.ipc.open_stream(io.BytesIO(plaintext)).read_all()
    except pa.ArrowException as exc:
        raise FormatError(
            f"data set {manifest.dataset_id!r} is not an Arrow IPC stream: {exc}"
        ) from None
    columns = [{"name": f.name, "type": str(f.type)} for f in table.schema]
    if schema_sha256(columns) != manifest.schema_sha256:
        raise IntegrityError(f"data set {manifest.dataset_id!r} schema differs from its manifest")
    if table.num_rows != manifest.row_count:
        raise IntegrityError(
            f"data set {manifest.dataset_id!r} row count differs from its manifest"
        )
    return table


def feature_matrix(table: Any, label: str, id_column: str | None) -> tuple[Any, Any, list[str]]:
    """Arrow table → (float32 features, float32 labels, feature names).

    Every non-label, non-id column is a feature, in schema order; nulls are NaN
    (XGBoost's missing value). The same rule is documented for plaintext users
    so a model trained here equals one trained on the joined rows in the clear.
    """
    import numpy as np

    names = [n for n in table.column_names if n not in (label, id_column)]
    if label not in table.column_names:
        raise DatasetError(f"label column {label!r} is not in the data")
    x = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        x[:, j] = table.column(name).to_numpy(zero_copy_only=False).astype(np.float32)
    y = table.column(label).to_numpy(zero_copy_only=False).astype(np.float32)
    return x, y, names


def _join(tables: list[Any], job: AcceptedJob) -> Any:
    """Horizontal join: the union of rows, in terms order, of tables with equal schemas.

    The id column identifies rows but is no feature, so its type may differ
    between parties; it is dropped before the schemas are compared.
    """
    import pyarrow as pa

    id_column = job.terms.id_column
    tables = [t.drop_columns([id_column]) if id_column in t.column_names else t for t in tables]
    first = tables[0].schema
    for (dataset_id, _), table in zip(job.terms.datasets, tables, strict=True):
        if not table.schema.equals(first):
            raise DatasetError(
                f"horizontal join needs equal schemas; data set {dataset_id!r} differs from "
                f"{job.terms.datasets[0][0]!r}"
            )
    return pa.concat_tables(tables)


def train_params(terms: JobTerms) -> dict[str, Any]:
    return {**terms.params, "objective": terms.objective, "seed": terms.seed}


def run(identity: EnclaveIdentity, job: AcceptedJob) -> Iterator[Progress | ReleasedOutput | bytes]:
    """Decrypt, join, train and release; yields progress, outputs, then the signed statement."""
    import numpy as np
    import xgboost as xgb

    terms = job.terms
    started = time.perf_counter()
    tables = []
    for dataset_id, _ in terms.datasets:
        blob = bytes(job.received.get(dataset_id, b""))
        tables.append(_open_dataset(identity, job.manifests[dataset_id], blob))
    joined = _join(tables, job)
    x, y, names = feature_matrix(joined, terms.label, terms.id_column)
    if terms.objective.startswith("binary:") and not np.isin(y, (0.0, 1.0)).all():
        raise DatasetError(f"label {terms.label!r} must be 0 or 1 for {terms.objective}")
    opened = time.perf_counter()
    yield Progress("timing", f"decrypt+join {opened - started:.3f}s")
    yield Progress(
        "progress",
        f"training on {x.shape[0]} rows, {x.shape[1]} features, {terms.num_rounds} rounds",
    )
    dtrain = xgb.DMatrix(x, label=y, feature_names=names)
    history: dict[str, Any] = {}
    booster = xgb.train(
        train_params(terms),
        dtrain,
        num_boost_round=terms.num_rounds,
        evals=[(dtrain, "train")] if "metrics" in terms.outputs else [],
        evals_result=history,
        verbose_eval=False,
    )
    trained = time.perf_counter()
    yield Progress("timing", f"train {trained - opened:.3f}s")
    artefacts: dict[str, bytes] = {}
    if "model" in terms.outputs:
        artefacts["model"] = bytes(booster.save_raw(raw_format="json"))
    if "metrics" in terms.outputs:
        artefacts["metrics"] = canonical.dumps(
            {"rows": int(x.shape[0]), "features": names, "train": history.get("train", {})}
        )
    records = []
    for name, data in artefacts.items():
        content_key = os.urandom(32)
        ciphertext = stream.seal_stream(content_key, data, f"{terms.job_id}/{name}".encode())
        wrapped = {
            r.signing_key.hex: hpke.wrap_key(
                content_key, r.hpke_key, hpke.result_key_info(terms.job_id, name, r.hpke_key)
            )
            for r in terms.recipients
        }
        records.append(OutputRecord(name, canonical.sha256_hex(ciphertext), wrapped))
        yield ReleasedOutput(name, ciphertext)
    statement = ResultStatement(
        job_id=terms.job_id,
        terms_digest=job.terms_envelope.digest,
        mrenclave=identity.mrenclave,
        outputs=records,
        summary={"rows": int(x.shape[0]), "features": len(names), "rounds": terms.num_rounds},
    )
    released = time.perf_counter()
    yield Progress("timing", f"release {released - trained:.3f}s")
    log.info("job %s released %d outputs", terms.job_id, len(records))
    yield statement.sign(identity.signing_key).to_bytes()
