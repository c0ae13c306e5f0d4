"""Release: the outputs the terms ask for, each sealed to its recipients, and the result statement.

What each output holds (protocols/SPEC.md §3.7):

- ``model``: the booster, ``save_raw`` in the terms' model format (json or ubj);
- ``metrics``: canonical JSON — ``objective``, ``rows`` (training rows),
  ``validation_rows``, ``features`` (names in order), ``curves``
  (``{"train"|"validation": {metric: [values]}}``), ``evaluated_rounds``
  (1-based rounds of the curve points), ``best_iteration`` (XGBoost's 0-based
  index, or null) and ``best_score`` (or null); vertical jobs add
  ``joined_rows``, the size of the intersection, released nowhere else;
- ``importance``: canonical JSON ``{feature: gain}`` (``get_score(importance_type="gain")``);
- ``predictions.<dataset id>`` (horizontal jobs): CSV of the final model's
  predictions on that data set's rows, in its order, under a header of its id
  column's name (``row``, numbered from 1, without one) and ``prediction``
  (``prediction_0`` … for ``multi:softprob``). Each goes to that data set's
  owner alone, and only if the owner is a recipient.

Every other output is wrapped to every recipient. The result statement lists
exactly the outputs released and whom each was wrapped to.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

from enclave_worker.identity import EnclaveIdentity
from enclave_worker.jobs.consent import AcceptedJob
from enclave_worker.jobs.tables import TrainingData
from enclave_worker.jobs.training import Matrices, Trained
from protocols import canonical, hpke, stream
from protocols.documents import JobTerms, OutputRecord, Recipient, ResultStatement

PREDICTIONS = "predictions"


@dataclass
class ReleasedOutput:
    """One output of a job, sealed to its recipients: ``name`` (model, metrics) and ciphertext."""

    name: str
    ciphertext: bytes


@dataclass
class Artefact:
    """One output in the clear, with the recipients it is sealed to."""

    name: str
    data: bytes
    recipients: list[Recipient]


def metrics(terms: JobTerms, trained: Trained, data: TrainingData, matrices: Matrices) -> bytes:
    doc: dict[str, Any] = {
        "objective": terms.objective,
        "rows": matrices.rows,
        "validation_rows": matrices.validation_count,
        "features": data.names,
        "curves": trained.evaluation.curves,
        "evaluated_rounds": trained.evaluation.rounds,
        "best_iteration": trained.best_iteration,
        "best_score": trained.best_score,
    }
    if terms.join == "vertical":
        doc["joined_rows"] = data.joined_rows
    return canonical.dumps(doc)


def predictions_csv(id_column: str | None, ids: Any, values: Any) -> bytes:
    """One data set's predictions as CSV: its ids (or row numbers from 1), then the values."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rows = len(values)
    if id_column is None or ids is None:
        id_column, ids = "row", pa.array(np.arange(1, rows + 1, dtype=np.int64))
    columns: dict[str, Any] = {id_column: ids}
    if values.ndim == 2:
        for k in range(values.shape[1]):
            columns[f"prediction_{k}"] = pa.array(values[:, k])
    else:
        columns["prediction"] = pa.array(values)
    sink = io.BytesIO()
    pacsv.write_csv(pa.table(columns), sink, pacsv.WriteOptions(quoting_style="needed"))
    return sink.getvalue()


def artefacts(
    job: AcceptedJob,
    trained: Trained,
    data: TrainingData,
    matrices: Matrices,
    predictions: Any = None,
) -> list[Artefact]:
    """The plaintext of each output the terms name, in the order above, with its recipients.

    ``predictions`` (horizontal jobs that release them) holds the final
    model's predictions on every joined row, in join order.
    """
    terms = job.terms
    everyone = list(terms.recipients)
    released: list[Artefact] = []
    # A sealed model never leaves (the terms cannot both seal and release it; checked again).
    if "model" in terms.outputs and not terms.sealed:
        model = bytes(trained.booster.save_raw(raw_format=terms.model_format))
        released.append(Artefact("model", model, everyone))
    if "metrics" in terms.outputs:
        released.append(Artefact("metrics", metrics(terms, trained, data, matrices), everyone))
    if "importance" in terms.outputs:
        gain = trained.booster.get_score(importance_type="gain")
        importance = canonical.dumps({name: float(value) for name, value in gain.items()})
        released.append(Artefact("importance", importance, everyone))
    if PREDICTIONS in terms.outputs and predictions is not None:
        start = 0
        for dataset_id, rows, id_column, ids in data.parts:
            values = predictions[start : start + rows]
            start += rows
            owner = job.manifests[dataset_id].owner_key
            mine = [r for r in terms.recipients if r.signing_key == owner]
            if mine:  # an owner who is no recipient gets nothing, nor does anyone else
                csv = predictions_csv(id_column, ids, values)
                released.append(Artefact(f"{PREDICTIONS}.{dataset_id}", csv, mine))
    return released


def seal_output(terms: JobTerms, artefact: Artefact) -> tuple[ReleasedOutput, OutputRecord]:
    """Seal one output under a fresh content key wrapped to each of its recipients."""
    content_key = os.urandom(32)
    name = artefact.name
    ciphertext = stream.seal_stream(content_key, artefact.data, f"{terms.job_id}/{name}".encode())
    wrapped = {
        r.signing_key.hex: hpke.wrap_key(
            content_key, r.hpke_key, hpke.result_key_info(terms.job_id, name, r.hpke_key)
        )
        for r in artefact.recipients
    }
    record = OutputRecord(name, canonical.sha256_hex(ciphertext), wrapped)
    return ReleasedOutput(name, ciphertext), record


def result_statement(
    identity: EnclaveIdentity,
    job: AcceptedJob,
    records: list[OutputRecord],
    summary: dict[str, Any],
    sealed_model: str | None = None,
) -> ResultStatement:
    """What the enclave states about the job it ran: terms, measurement, outputs, a summary,
    and the id of the model it keeps when the terms seal it."""
    return ResultStatement(
        job_id=job.terms.job_id,
        terms_digest=job.terms_envelope.digest,
        mrenclave=identity.mrenclave,
        outputs=records,
        summary=summary,
        sealed_model=sealed_model,
    )
