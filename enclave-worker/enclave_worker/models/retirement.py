"""Retiring a sealed model: every owner signs, then crypto-shredding (protocols/SPEC.md §3.10).

The owners are the ``owner_key`` of each signed manifest of the job that
sealed the model, recorded when it was stored (models.store); each must sign
a model retirement naming the model and the digest of the terms that sealed
it. With every signature checked, the store writes the tombstone and deletes
the model file, its key, its meta and usage and the job's checkpoints
(models.store.ModelStore.retire), and the cache drops the loaded booster.
Retiring a retired model again, with valid signatures, succeeds and changes
nothing (a coordinator that lost the first answer may ask again).
"""

from __future__ import annotations

import logging
import time

from enclave_worker.models.cache import ModelCache
from enclave_worker.models.store import ModelStore, Tombstone
from protocols.documents import ModelRetirement
from protocols.errors import ConsentError, NotAllowed
from protocols.keys import VerifyKey
from protocols.statements import Envelope

log = logging.getLogger(__name__)


def retire(
    store: ModelStore, cache: ModelCache, model_id: str, retirements: list[bytes]
) -> Tombstone:
    """Check one retirement from every owner, then destroy the model; its tombstone."""
    with store.lock(model_id):
        found = store.record(model_id)
        owners, digest = found.owners, found.terms_digest
        signed = _signers(model_id, digest, set(owners), retirements)
        missing = [k for k in owners if k not in signed]
        if missing:
            keys = ", ".join(k.hex[:16] + "…" for k in missing)
            raise ConsentError(
                f"retiring model {model_id!r} needs every data owner's signature; missing: "
                f"{keys} (each data owner signs a model retirement of it, protocols/SPEC.md §3.10)"
            )
        if isinstance(found, Tombstone):
            return found
        tombstone = Tombstone(
            model_id,
            digest,
            owners,
            tuple(q.signing_key for q in found.terms.queriers),
            int(time.time()),
        )
        store.retire(tombstone)
        cache.evict(model_id)
    log.info("sealed model %s retired by its %d owners", model_id, len(owners))
    return tombstone


def _signers(
    model_id: str, digest: str, owners: set[VerifyKey], retirements: list[bytes]
) -> set[VerifyKey]:
    """The owners whose retirement of this model and terms verifies; refuse any other."""
    signed: set[VerifyKey] = set()
    for raw in retirements:
        envelope = Envelope.from_bytes(raw, "model retirement")
        retirement = ModelRetirement.verify(envelope)  # SignatureError if forged
        if retirement.model_id != model_id:
            raise ConsentError(
                f"a retirement names model {retirement.model_id!r}, not {model_id!r}"
            )
        if retirement.terms_digest != digest:
            raise ConsentError(
                f"a retirement of model {model_id!r} names other job terms "
                f"({retirement.terms_digest[:16]}…) than those that sealed it ({digest[:16]}…)"
            )
        if envelope.signer not in owners:
            raise NotAllowed(
                f"a retirement of model {model_id!r} is signed by key {envelope.signer.hex[:16]}…, "
                "which owns no data set of the job that sealed it: only its data owners retire it"
            )
        signed.add(envelope.signer)
    return signed
