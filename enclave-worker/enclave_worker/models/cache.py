"""Loaded models kept in memory between queries, least recently used evicted, bounded in bytes.

A query of a model in the cache is not a model load: no EFS read, no
decryption, no parsing. The bound is a share (:data:`MEMORY_SHARE`) of the
enclave's memory limit (``[resources] memory_mb``, libos.limits), the rest
being for the queries' own rows and the jobs' service; a model is counted at
the size of its ``ubj`` bytes (XGBoost 3.2 holds a loaded booster in about a
quarter of that: the bound is conservative). A model larger than the whole
bound is still loaded for its query, and kept only until the next one.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from libos import limits

log = logging.getLogger(__name__)

# The share of the memory limit the cache may hold.
MEMORY_SHARE = 0.25
# Without a configured limit (outside an enclave): this many bytes.
DEFAULT_BYTES = 512 << 20
# What a loaded model counts at least (the booster's own bookkeeping).
MIN_ENTRY_BYTES = 64 << 10


def default_budget() -> int:
    """Bytes the cache may hold: :data:`MEMORY_SHARE` of the enclave's memory limit."""
    installed = limits.current()
    if installed is None:
        return DEFAULT_BYTES
    return int(installed.memory_bytes * MEMORY_SHARE)


@dataclass
class LoadedModel:
    """A booster ready to predict, its size as the cache counts it, and a lock for predicting."""

    booster: Any
    size: int
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelCache:
    """An LRU of loaded boosters by model id, holding at most ``budget`` bytes."""

    def __init__(self, budget: int | None = None) -> None:
        self.budget = default_budget() if budget is None else budget
        self._entries: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # models loaded since start (tests and logs read it)

    @property
    def held(self) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values())

    def __contains__(self, model_id: str) -> bool:
        with self._lock:
            return model_id in self._entries

    def get(self, model_id: str, load: Callable[[], bytes]) -> LoadedModel:
        """The loaded model, loading it with ``load()`` (its ``ubj`` bytes) if it is not held."""
        with self._lock:
            entry = self._entries.get(model_id)
            if entry is not None:
                self._entries.move_to_end(model_id)
                return entry
        raw = load()
        entry = LoadedModel(_booster(raw), max(len(raw), MIN_ENTRY_BYTES))
        with self._lock:
            self.loads += 1
            self._entries[model_id] = entry
            self._entries.move_to_end(model_id)
            while len(self._entries) > 1 and sum(e.size for e in self._entries.values()) > (
                self.budget
            ):
                evicted, _ = self._entries.popitem(last=False)
                log.info("model %s evicted from the cache", evicted)
            held = sum(e.size for e in self._entries.values())
        log.info(
            "model %s loaded into the cache (%d bytes; %d of %d held)",
            model_id,
            entry.size,
            held,
            self.budget,
        )
        return entry

    def evict(self, model_id: str) -> None:
        with self._lock:
            self._entries.pop(model_id, None)


def _booster(raw: bytes) -> Any:
    import xgboost as xgb

    return xgb.Booster(model_file=bytearray(raw))
