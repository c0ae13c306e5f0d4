"""Sealed models in the enclave's encrypted mount (libos.efs), one directory per model.

``models/<model id>/`` (the model id is the id of the job that sealed it):

=============== ===============================================================
``key``         the model's own 32-byte key (crypto-shredding: retirement
                deletes it)
``model``       ``Booster.save_raw("ubj")`` sealed with protocols.stream under
                that key, associated data ``"detente/v1 sealed-model <id>"``
``meta``        canonical JSON: the terms envelope (hex) and its digest, the
                owners' keys (from the signed manifests), the feature schema
                with its categories (models.schema), when it was sealed
``statement``   the signed result statement naming the model: present once
                the model may answer queries
``usage/<key>`` one per querier (its signing key, hex): models.usage
``retired``     the tombstone: the terms digest, the owners' and queriers'
                keys and when; every other file is deleted
=============== ===============================================================

Each file is one atomic EFS write; the mount as a whole is rollback-protected
by the platform counter, so usage cannot be reset by putting back old files.

Crash safety. ``key``, ``model`` and ``meta`` are written in that order, so a
model without ``meta`` is half-written: it is never loaded, and the next
start removes it (:meth:`ModelStore.sweep`). A model with ``meta`` but no
``statement`` was stored but its job never signed a statement (the worker
died in between): it answers no query ("not ready") until a re-run of the
job signs one. A re-run of the same terms keeps the stored model and its
usage, never resets them. A retirement writes the tombstone first, then
deletes; a crash in between is finished by the next start.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from enclave_worker.models.schema import ModelSchema
from enclave_worker.models.usage import Usage
from protocols import canonical, stream
from protocols.documents import JobTerms
from protocols.errors import ConsentError, FormatError, ModelRetired, NotFound, WrongState
from protocols.keys import VerifyKey
from protocols.statements import Envelope

if TYPE_CHECKING:
    from libos.efs import EncryptedFS

log = logging.getLogger(__name__)

ROOT = "models"
META_VERSION = 1
KEY_SIZE = 32


def model_associated_data(model_id: str) -> bytes:
    """STREAM associated data of a sealed model's file."""
    return f"detente/v1 sealed-model {model_id}".encode()


@dataclass(frozen=True)
class SealedModel:
    """A trained model the job hands over instead of releasing it: ``save_raw("ubj")`` and
    what predicting needs (models.schema)."""

    raw: bytes
    schema: ModelSchema


@dataclass(frozen=True)
class ModelRecord:
    """What the store knows of a model that is not retired."""

    model_id: str
    terms_envelope: Envelope
    terms: JobTerms
    owners: tuple[VerifyKey, ...]
    schema: ModelSchema
    active: bool  # its result statement was signed: it answers queries

    @property
    def terms_digest(self) -> str:
        return self.terms_envelope.digest


@dataclass(frozen=True)
class Tombstone:
    """What remains of a retired model: enough to refuse queries and re-seals clearly."""

    model_id: str
    terms_digest: str
    owners: tuple[VerifyKey, ...]
    queriers: tuple[VerifyKey, ...]
    retired_at: int
    # The data set whose owner's withdrawal destroyed the model (enclave_worker.withdrawals);
    # "" when every owner retired it.
    withdrawn_dataset: str = ""

    def to_bytes(self) -> bytes:
        doc = {
            "version": META_VERSION,
            "model_id": self.model_id,
            "terms_digest": self.terms_digest,
            "owners": [k.hex for k in self.owners],
            "queriers": [k.hex for k in self.queriers],
            "retired_at": self.retired_at,
        }
        if self.withdrawn_dataset:
            doc["withdrawn_dataset"] = self.withdrawn_dataset
        return canonical.dumps(doc)

    @classmethod
    def from_bytes(cls, data: bytes, what: str) -> Tombstone:
        doc = canonical.loads(data, what)
        return cls(
            canonical.field(doc, "model_id", str, what),
            canonical.digest_field(doc, "terms_digest", what),
            tuple(VerifyKey.from_hex(k) for k in canonical.field(doc, "owners", list, what)),
            tuple(VerifyKey.from_hex(k) for k in canonical.field(doc, "queriers", list, what)),
            int(canonical.field(doc, "retired_at", int, what)),
            str(doc.get("withdrawn_dataset") or ""),
        )

    def refusal(self) -> ModelRetired:
        if self.withdrawn_dataset:
            return ModelRetired(
                f"the model {self.model_id!r} was destroyed because its owner withdrew data set "
                f"{self.withdrawn_dataset!r} it was trained on: it answers no query"
            )
        return ModelRetired(
            f"the model {self.model_id!r} was retired by its owners: its file and key are "
            "destroyed and it answers no query"
        )


def _path(model_id: str, name: str) -> str:
    if model_id in (".", ".."):
        raise FormatError(f"model id {model_id!r} cannot name a sealed model")
    return f"{ROOT}/{model_id}/{name}"


class ModelStore:
    """The sealed models of one encrypted mount. Used by the worker's service process only."""

    def __init__(self, fs: EncryptedFS) -> None:
        self._fs = fs
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def lock(self, model_id: str) -> threading.Lock:
        """The lock under which a model's usage is charged and the model retired."""
        with self._locks_lock:
            return self._locks.setdefault(model_id, threading.Lock())

    # --- reading ----------------------------------------------------------------------

    def lookup(self, model_id: str) -> ModelRecord | Tombstone | None:
        """The model's record, its tombstone, or None if the enclave keeps no such model."""
        retired = _path(model_id, "retired")
        if self._fs.is_file(retired):
            return Tombstone.from_bytes(self._fs.read_bytes(retired), "sealed model tombstone")
        meta = _path(model_id, "meta")
        if not self._fs.is_file(meta):
            return None
        what = f"meta of sealed model {model_id!r}"
        doc = canonical.loads(self._fs.read_bytes(meta), what)
        if doc.get("version") != META_VERSION:
            raise FormatError(f"{what} has version {doc.get('version')!r}, not {META_VERSION}")
        envelope = Envelope.from_bytes(canonical.unhex(doc.get("terms"), what), what)
        return ModelRecord(
            model_id,
            envelope,
            JobTerms.from_dict(canonical.loads(envelope.payload, what)),
            tuple(VerifyKey.from_hex(k) for k in canonical.field(doc, "owners", list, what)),
            ModelSchema.from_dict(canonical.field(doc, "schema", dict, what)),
            self._fs.is_file(_path(model_id, "statement")),
        )

    def record(self, model_id: str) -> ModelRecord | Tombstone:
        """The model's record or tombstone; NotFound if the enclave keeps no such model."""
        found = self.lookup(model_id)
        if found is None:
            raise NotFound(
                f"this enclave keeps no sealed model {model_id!r}: check the model id (the id "
                "of the job that sealed it) and that its job finished"
            )
        return found

    def active(self, model_id: str) -> ModelRecord:
        """The record of a model that answers queries; ModelRetired or WrongState otherwise."""
        found = self.record(model_id)
        if isinstance(found, Tombstone):
            raise found.refusal()
        if not found.active:
            raise WrongState(
                f"the model {model_id!r} is not ready: its job stored it but signed no result "
                "statement (the worker stopped in between); retry the job to finish it"
            )
        return found

    def load(self, model_id: str) -> bytes:
        """The model's ``save_raw("ubj")`` bytes, opened with its own key."""
        key = self._fs.read_bytes(_path(model_id, "key"))
        blob = self._fs.read_bytes(_path(model_id, "model"))
        return stream.open_stream(key, blob, model_associated_data(model_id))

    def usage(self, model_id: str, querier: VerifyKey) -> Usage:
        path = _path(model_id, f"usage/{querier.hex}")
        if not self._fs.is_file(path):
            return Usage()
        return Usage.from_bytes(self._fs.read_bytes(path), f"usage of model {model_id!r}")

    # --- writing ----------------------------------------------------------------------

    def check_can_seal(self, terms: JobTerms, terms_digest: str) -> None:
        """Refuse sealing under an id that is retired or holds a model of other terms.

        A re-run of the same terms may seal again: it keeps the stored model.
        """
        found = self.lookup(terms.job_id)
        if isinstance(found, Tombstone):
            raise ModelRetired(
                f"the model {terms.job_id!r} was retired by its owners; no job may seal a "
                "model under its id again: propose the job with a new id"
            )
        if found is not None and found.terms_digest != terms_digest:
            raise ConsentError(
                f"this enclave already keeps a model {terms.job_id!r} sealed by other job "
                "terms: propose the job with a new id"
            )

    def seal(self, terms_envelope: Envelope, owners: list[VerifyKey], model: SealedModel) -> bool:
        """Store the model of the job of ``terms_envelope``; False if it was already stored.

        A model already stored under these terms (a re-run) is kept as it is,
        with its usage: a model id names one model for its life.
        """
        terms = JobTerms.from_dict(canonical.loads(terms_envelope.payload, "job terms"))
        model_id = terms.job_id
        self.check_can_seal(terms, terms_envelope.digest)
        if self.lookup(model_id) is not None:
            return False
        key = os.urandom(KEY_SIZE)
        self._fs.write_bytes(_path(model_id, "key"), key)
        sealed = stream.seal_stream(key, model.raw, model_associated_data(model_id))
        self._fs.write_bytes(_path(model_id, "model"), sealed)
        meta = {
            "version": META_VERSION,
            "model_id": model_id,
            "terms": terms_envelope.to_bytes().hex(),
            "terms_digest": terms_envelope.digest,
            "owners": sorted(k.hex for k in owners),
            "schema": model.schema.to_dict(),
            "model_sha256": canonical.sha256_hex(sealed),
            "sealed_at": int(time.time()),
        }
        # Last: a model without meta is half-written and never loaded.
        self._fs.write_bytes(_path(model_id, "meta"), canonical.dumps(meta))
        log.info("sealed model %s stored (%d bytes)", model_id, len(sealed))
        return True

    def activate(self, model_id: str, statement: bytes) -> None:
        """Keep the signed statement naming the model: from now on it answers queries."""
        self._fs.write_bytes(_path(model_id, "statement"), statement)

    def write_usage(self, model_id: str, querier: VerifyKey, usage: Usage) -> None:
        self._fs.write_bytes(_path(model_id, f"usage/{querier.hex}"), usage.to_bytes())

    def retire(self, tombstone: Tombstone) -> None:
        """Write the tombstone, then delete the model, its key, meta, statement and usage,
        and the job's training checkpoints (which hold the finished model too)."""
        model_id = tombstone.model_id
        self._fs.write_bytes(_path(model_id, "retired"), tombstone.to_bytes())
        removed = self._remove_all(model_id, keep="retired")
        log.info("sealed model %s retired: %d files removed", model_id, removed)

    def model_ids(self) -> list[str]:
        """The ids of every model this store keeps or keeps a tombstone of."""
        return sorted({p.split("/")[1] for p in self._fs.files() if p.startswith(f"{ROOT}/")})

    def _remove_all(self, model_id: str, keep: str | None = None) -> int:
        """Remove the model's files but ``keep``, and its job's checkpoints, key first."""
        prefixes = (f"{ROOT}/{model_id}/", f"checkpoints/{model_id}/")
        doomed = [p for p in self._fs.files() if p.startswith(prefixes)]
        if keep is not None:
            doomed = [p for p in doomed if p != _path(model_id, keep)]
        # The key first: once it is gone the model file opens no more.
        doomed.sort(key=lambda p: (p != _path(model_id, "key"), p))
        for path in doomed:
            self._fs.remove(path)
        return len(doomed)

    def sweep(self) -> None:
        """At start: finish retirements a crash interrupted, drop half-written models."""
        every = [p for p in self._fs.files() if p.startswith(f"{ROOT}/")]
        for model_id in sorted({p.split("/")[1] for p in every}):
            files = {p.split("/", 2)[2] for p in every if p.startswith(f"{ROOT}/{model_id}/")}
            if "retired" in files and len(files) > 1:
                self._remove_all(model_id, keep="retired")
                log.info("sealed model %s: finished an interrupted retirement", model_id)
            elif "retired" not in files and "meta" not in files:
                for name in files:
                    self._fs.remove(_path(model_id, name))
                log.info("sealed model %s: removed a half-written model", model_id)
