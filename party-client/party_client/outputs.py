"""A job's outputs: verify the result statement, decrypt what the job released to this party
(a sealed model is not among them: it stays in the enclave, :mod:`party_client.queries`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from party_client.home import PartyHome
from party_client.job_control import wait
from party_client.remote import Coordinator, connected
from protocols import hpke, stream
from protocols.documents import JobTerms, ResultStatement
from protocols.durable import write_atomic
from protocols.errors import ConsentError, IntegrityError, SetupError
from protocols.statements import Envelope

PREDICTIONS = "predictions."  # an output per data set: predictions.DATASET


def file_name(terms: JobTerms, output: str) -> str:
    """The file an output is written to, by its kind (the names the enclave releases):
    ``model.json`` or ``model.ubj`` (the terms' model format), ``metrics.json``,
    ``importance.json`` and ``predictions.DATASET.csv``.

    Raises IntegrityError for a name the terms do not release (so no name from
    the statement becomes a path unchecked).
    """
    if output == "model" and "model" in terms.outputs:
        return f"model.{terms.model_format}"
    if output in ("metrics", "importance") and output in terms.outputs:
        return f"{output}.json"
    dataset_id = output.removeprefix(PREDICTIONS)
    if (
        output.startswith(PREDICTIONS)
        and "predictions" in terms.outputs
        and dataset_id in {d for d, _ in terms.datasets}
    ):
        return f"{output}.csv"
    raise IntegrityError(
        f"the result statement names output {output!r}, which the terms do not release"
    )


def results(
    home: PartyHome,
    job_id: str,
    out_dir: Path,
    timeout: float = 0,
    *,
    remote: Coordinator | None = None,
) -> dict[str, Path]:
    """Verify the enclave's result statement, decrypt our outputs, write them to ``out_dir``.

    Each output goes to the file :func:`file_name` gives it, with mode 0600,
    like keys: they are this party's results. Returns the paths by output name.

    A job whose terms seal the model releases no model to anyone: its
    statement must name the sealed model (the job id), which is queried with
    :func:`party_client.predict`; the other outputs, if any, are written as
    usual (and there may be none).
    """
    job = wait(home, job_id, timeout, remote=remote)
    if job.state != "succeeded":
        detail = f": {job.error}" if job.error else ""
        raise SetupError(f"job {job_id} is {job.state}{detail}")
    terms = job.terms
    enclave_key = home.enclave_signing_key()
    statement = ResultStatement.verify(
        Envelope.from_bytes(job.result_statement, "result statement"), enclave_key
    )
    if statement.job_id != job_id or statement.terms_digest != job.terms_digest:
        raise IntegrityError("the result statement is about other job terms: refuse it")
    if statement.mrenclave not in terms.allowed_mrenclaves:
        raise IntegrityError("the result comes from a measurement the terms do not allow")
    if statement.sealed_model != (job_id if terms.sealed else None):
        raise IntegrityError(
            "the result statement does not say what the terms say of the model (sealed in the "
            "enclave, or released): refuse it"
        )
    me = home.signing_key().verify_key
    hpke_key = home.hpke_key()
    written: dict[str, Path] = {}
    with connected(home, remote) as coordinator:
        for output in statement.outputs:
            wrapped = output.wrapped_keys.get(me.hex)
            if wrapped is None:
                continue
            name = file_name(terms, output.name)
            ciphertext = coordinator.fetch_output(job_id, output.name)
            if hashlib.sha256(ciphertext).hexdigest() != output.ciphertext_sha256:
                raise IntegrityError(f"output {output.name!r} does not match the signed statement")
            key = hpke.unwrap_key(
                wrapped, hpke_key, hpke.result_key_info(job_id, output.name, hpke_key.public_key)
            )
            plaintext = stream.open_stream(key, ciphertext, f"{job_id}/{output.name}".encode())
            path = out_dir / name
            write_atomic(path, plaintext, mode=0o600)
            written[output.name] = path
    if not written and not terms.sealed:
        raise ConsentError(f"job {job_id} released nothing to you: you are not a named recipient")
    return written
