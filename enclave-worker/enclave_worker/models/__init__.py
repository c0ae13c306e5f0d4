"""Sealed models: kept in the encrypted mount, queried, never released (docs/protocol.md §7).

A job whose terms seal the model hands it to the worker's service process
(jobs.run → ``JobEnvironment.seal_model``), which stores it before the
result statement naming it is signed. Queries and retirements run in the
service process too, beside any training job. One module per concern:

- ``schema``: :class:`ModelSchema`, the features (in order, with the agreed
  categories) and objective a model predicts from, and the check of a query's
  columns against them;
- ``store``: :class:`ModelStore`, ``models/<id>/`` in the encrypted mount:
  the model under a key of its own, that key, its meta, its statement, each
  querier's usage, the tombstone of a retired model; :class:`SealedModel`;
- ``usage``: :class:`Usage`, a querier's rows in all and per UTC day and its
  recent query ids (replay refusal);
- ``cache``: :class:`ModelCache`, loaded boosters, least recently used
  evicted within a share of the memory limit;
- ``queries``: :class:`QueryHandler`, the checks of docs/protocol.md §7 in
  their order, then predict, charge, seal and sign the answer;
- ``retirement``: :func:`retire`, every owner's signature, then crypto-shredding.
"""

from enclave_worker.models.cache import ModelCache
from enclave_worker.models.queries import Answer, CheckedQuery, QueryHandler
from enclave_worker.models.retirement import retire
from enclave_worker.models.schema import Feature, ModelSchema
from enclave_worker.models.store import ModelRecord, ModelStore, SealedModel, Tombstone
from enclave_worker.models.usage import Usage

__all__ = [
    "Answer",
    "CheckedQuery",
    "Feature",
    "ModelCache",
    "ModelRecord",
    "ModelSchema",
    "ModelStore",
    "QueryHandler",
    "SealedModel",
    "Tombstone",
    "Usage",
    "retire",
]
