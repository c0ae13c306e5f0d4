"""Release: the outputs the terms ask for, sealed to each recipient, and the result statement."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from enclave_worker.identity import EnclaveIdentity
from enclave_worker.jobs.consent import AcceptedJob
from protocols import canonical, hpke, stream
from protocols.documents import JobTerms, OutputRecord, ResultStatement


@dataclass
class ReleasedOutput:
    """One output of a job, sealed to its recipients: ``name`` (model, metrics) and ciphertext."""

    name: str
    ciphertext: bytes


def outputs(
    terms: JobTerms, booster: Any, history: dict[str, Any], rows: int, names: list[str]
) -> dict[str, bytes]:
    """The plaintext of each output the terms name: the model (JSON), the training metrics."""
    artefacts: dict[str, bytes] = {}
    if "model" in terms.outputs:
        artefacts["model"] = bytes(booster.save_raw(raw_format="json"))
    if "metrics" in terms.outputs:
        artefacts["metrics"] = canonical.dumps(
            {"rows": rows, "features": names, "train": history.get("train", {})}
        )
    return artefacts


def seal_output(terms: JobTerms, name: str, data: bytes) -> tuple[ReleasedOutput, OutputRecord]:
    """Seal one output under a fresh content key wrapped to every recipient of the terms."""
    content_key = os.urandom(32)
    ciphertext = stream.seal_stream(content_key, data, f"{terms.job_id}/{name}".encode())
    wrapped = {
        r.signing_key.hex: hpke.wrap_key(
            content_key, r.hpke_key, hpke.result_key_info(terms.job_id, name, r.hpke_key)
        )
        for r in terms.recipients
    }
    record = OutputRecord(name, canonical.sha256_hex(ciphertext), wrapped)
    return ReleasedOutput(name, ciphertext), record


def result_statement(
    identity: EnclaveIdentity,
    job: AcceptedJob,
    records: list[OutputRecord],
    rows: int,
    features: int,
) -> ResultStatement:
    """What the enclave states about the job it ran: terms, measurement, outputs, a summary."""
    return ResultStatement(
        job_id=job.terms.job_id,
        terms_digest=job.terms_envelope.digest,
        mrenclave=identity.mrenclave,
        outputs=records,
        summary={"rows": rows, "features": features, "rounds": job.terms.num_rounds},
    )
