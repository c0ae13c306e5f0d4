"""Withdrawn data sets: the enclave's list, and crypto-shredding what was derived from them.

A data owner withdraws a data set with a signed statement (protocols/SPEC.md
§3.11). The worker checks it against the signed manifest sent along, then, in
its rollback-protected encrypted mount (the runtime's default mount, the one
that holds its identity keys and sealed models):

``withdrawals/datasets/<manifest digest>``
    the record: the statement (hex), the data set id, the owner key, when this
    enclave recorded it. From then on :func:`enclave_worker.jobs.accept`
    refuses every job that names that manifest, with any approvals: a copy of
    the ciphertext the host kept is useless, because the only key that opens
    it (this enclave's HPKE key unwrapping the data key) is held by code that
    refuses. Rolling the mount back to before the record is refused by the
    platform counter (docs/libos.md), and stops the whole worker.
``withdrawals/derived/<job id>/<terms digest>``
    written when a job is accepted, before its process starts: the manifest
    digests of the job's data sets, so a withdrawal finds the checkpoints
    (``checkpoints/<job id>/<terms digest>.xgb``, jobs.training.checkpoint_name)
    trained on it. The entry goes with the checkpoint.

Sealed models trained on a withdrawn data set are destroyed as a retirement
destroys them (models.store: key first, then model, meta, usage and the job's
checkpoints), leaving a tombstone that names the withdrawn data set: their
owners include the withdrawing owner, whose consent was for a model of its
data, and an owner that leaves takes its share of the model with it.

Order: record first, then destroy. A crash in between is finished at the next
start (:meth:`Withdrawals.sweep`). The same statement again changes nothing
and reports ``already``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from enclave_worker.models import ModelCache, ModelRecord, ModelStore, Tombstone
from protocols import canonical
from protocols.documents import DatasetWithdrawal
from protocols.errors import DetenteError, FormatError
from protocols.statements import Envelope

if TYPE_CHECKING:
    from enclave_worker.jobs import AcceptedJob
    from libos.efs import EncryptedFS

log = logging.getLogger(__name__)

ROOT = "withdrawals"
RECORDS = f"{ROOT}/datasets"
DERIVED = f"{ROOT}/derived"
CHECKPOINTS = "checkpoints"
RECORD_VERSION = 1


@dataclass(frozen=True)
class Shredded:
    """What one withdrawal destroyed here (counts and ids only: nothing of the data)."""

    dataset_id: str
    manifest_digest: str
    already: bool  # the enclave had recorded this withdrawal before
    checkpoints_removed: int
    models_retired: list[str]


class Withdrawals:
    """The withdrawn list and the derived-state index of one encrypted mount."""

    def __init__(self, fs: EncryptedFS) -> None:
        self._fs = fs

    # --- the list ---------------------------------------------------------------------

    def digests(self) -> frozenset[str]:
        """The manifest digests of every withdrawn data set."""
        prefix = RECORDS + "/"
        return frozenset(p[len(prefix) :] for p in self._fs.files() if p.startswith(prefix))

    def record(self, withdrawal: bytes, manifest: bytes) -> tuple[DatasetWithdrawal, bool]:
        """Verify the owner's statement against the manifest and put the digest on the
        list; the statement, and whether it was on the list already.

        SignatureError or FormatError (nothing recorded) if the statement is
        forged, altered, signed by another key than the manifest's owner, or
        names another manifest.
        """
        envelope = Envelope.from_bytes(withdrawal, "dataset withdrawal")
        doc, _ = DatasetWithdrawal.verify(envelope, Envelope.from_bytes(manifest, "manifest"))
        path = f"{RECORDS}/{doc.manifest_digest}"
        if self._fs.is_file(path):
            return doc, True
        record = {
            "version": RECORD_VERSION,
            "dataset_id": doc.dataset_id,
            "manifest_digest": doc.manifest_digest,
            "owner_key": doc.owner_key.hex,
            "statement": withdrawal.hex(),
            "manifest": manifest.hex(),
            "recorded_at": int(time.time()),
        }
        self._fs.write_bytes(path, canonical.dumps(record))
        log.info("data set %s withdrawn by its owner: on the withdrawn list", doc.dataset_id)
        return doc, False

    def export(self) -> list[dict[str, object]]:
        """Every record, for a worker that joins the pool (enclave_worker.provisioning): it
        gets the pool's keys, so it must refuse what the pool refuses before it serves."""
        return [
            canonical.loads(self._fs.read_bytes(f"{RECORDS}/{digest}"), "withdrawal record")
            for digest in sorted(self.digests())
        ]

    def adopt(self, records: object) -> int:
        """Record the withdrawals a pool's worker handed over with its keys; how many were
        new here. Each statement is checked against its manifest again."""
        if not isinstance(records, list):
            raise FormatError("the pool's withdrawn list must be a list of records")
        adopted = 0
        for doc in records:
            if not isinstance(doc, dict):
                raise FormatError("a withdrawal record of the pool must be an object")
            statement = canonical.unhex(doc.get("statement"), "withdrawal record statement")
            manifest = canonical.unhex(doc.get("manifest"), "withdrawal record manifest")
            _, already = self.record(statement, manifest)
            adopted += 0 if already else 1
        return adopted

    # --- derived state ----------------------------------------------------------------

    def note_job(self, job: AcceptedJob) -> None:
        """Index the job's checkpoint under its data sets' manifest digests (before it runs)."""
        digest = job.terms_envelope.digest
        path = f"{DERIVED}/{job.terms.job_id}/{digest}"
        if self._fs.is_file(path):
            return
        entry = {
            "version": RECORD_VERSION,
            "job_id": job.terms.job_id,
            "terms_digest": digest,
            "manifest_digests": sorted(d for _, d in job.terms.datasets),
        }
        self._fs.write_bytes(path, canonical.dumps(entry))

    def shred(
        self,
        dataset_id: str,
        manifest_digest: str,
        models: ModelStore | None,
        cache: ModelCache | None,
        already: bool = False,
    ) -> Shredded:
        """Delete the checkpoints and destroy the sealed models derived from the data set."""
        removed = self._remove_checkpoints(manifest_digest)
        retired: list[str] = []
        if models is not None:
            for model_id in models.model_ids():
                if self._retire_model(models, cache, model_id, dataset_id, manifest_digest):
                    retired.append(model_id)
        if removed or retired:
            log.info(
                "data set %s withdrawn: %d checkpoint file(s) and %d sealed model(s) destroyed",
                dataset_id,
                removed,
                len(retired),
            )
        return Shredded(dataset_id, manifest_digest, already, removed, retired)

    def sweep(self, models: ModelStore | None, cache: ModelCache | None) -> None:
        """At start: finish destroying what a crash left of each withdrawn data set."""
        for digest in sorted(self.digests()):
            try:
                doc = canonical.loads(self._fs.read_bytes(f"{RECORDS}/{digest}"), "withdrawal")
                dataset_id = canonical.field(doc, "dataset_id", str, "withdrawal record")
            except DetenteError:
                log.warning("withdrawal record %s… cannot be read; kept as withdrawn", digest[:16])
                dataset_id = "?"
            self.shred(dataset_id, digest, models, cache, already=True)

    def _remove_checkpoints(self, manifest_digest: str) -> int:
        removed = 0
        for path in [p for p in self._fs.files() if p.startswith(DERIVED + "/")]:
            doc = canonical.loads(self._fs.read_bytes(path), "derived-state index entry")
            if manifest_digest not in doc.get("manifest_digests", []):
                continue
            job_id = canonical.field(doc, "job_id", str, "derived-state index entry")
            terms_digest = canonical.field(doc, "terms_digest", str, "derived-state index entry")
            checkpoint = f"{CHECKPOINTS}/{job_id}/{terms_digest}.xgb"
            if self._fs.is_file(checkpoint):
                self._fs.remove(checkpoint)
                removed += 1
            self._fs.remove(path)
        return removed

    @staticmethod
    def _retire_model(
        models: ModelStore,
        cache: ModelCache | None,
        model_id: str,
        dataset_id: str,
        manifest_digest: str,
    ) -> bool:
        """Destroy the model if its terms were trained on the manifest; whether it was."""
        with models.lock(model_id):
            found = models.lookup(model_id)
            if not isinstance(found, ModelRecord):
                return False
            if manifest_digest not in {d for _, d in found.terms.datasets}:
                return False
            models.retire(
                Tombstone(
                    model_id,
                    found.terms_digest,
                    found.owners,
                    tuple(q.signing_key for q in found.terms.queriers),
                    int(time.time()),
                    withdrawn_dataset=dataset_id,
                )
            )
            if cache is not None:
                cache.evict(model_id)
        log.info("sealed model %s destroyed: data set %s was withdrawn", model_id, dataset_id)
        return True
