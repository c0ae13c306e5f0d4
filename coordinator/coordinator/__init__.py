"""The Detente coordinator: an untrusted relay, scheduler and ciphertext store.

It is trusted for availability only (docs/architecture.md, roles): it keeps ciphertext and
signed statements, checks what it can as a convenience, and leaves every
decision that matters to the enclave, which re-checks everything itself.

Layers, outside in: ``server`` assembles and runs everything; ``servicer`` is
the thin gRPC edge (``auth`` checks each request's signature); ``handler`` has
the logic (registry, datasets, jobs); ``scheduler`` runs approved jobs on the
enclave through ``enclave_client``; ``store`` keeps state and the audit chain,
``blobs`` the ciphertext. ``cli`` wires the ``detente coordinator`` commands.

The names below are the package's API. They load on first use, so importing
the package (as ``detente --help`` does, through ``cli``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coordinator.blobs import BlobStore
    from coordinator.enclave_client import EnclaveCallError, EnclaveClient, EnclaveNotTrusted
    from coordinator.handler import CoordinatorHandler, issue_enrollment
    from coordinator.limits import JobLimits
    from coordinator.server import (
        RunningCoordinator,
        certificate_path,
        default_db_url,
        serve,
        start,
        tls_identity,
    )
    from coordinator.servicer import CoordinatorServicer
    from coordinator.store import CoordinatorStore, SqlStore, verify_audit_chain

_HOMES = {
    "BlobStore": "coordinator.blobs",
    "CoordinatorHandler": "coordinator.handler",
    "CoordinatorServicer": "coordinator.servicer",
    "CoordinatorStore": "coordinator.store",
    "EnclaveCallError": "coordinator.enclave_client",
    "EnclaveClient": "coordinator.enclave_client",
    "EnclaveNotTrusted": "coordinator.enclave_client",
    "JobLimits": "coordinator.limits",
    "RunningCoordinator": "coordinator.server",
    "SqlStore": "coordinator.store",
    "certificate_path": "coordinator.server",
    "default_db_url": "coordinator.server",
    "issue_enrollment": "coordinator.handler",
    "serve": "coordinator.server",
    "start": "coordinator.server",
    "tls_identity": "coordinator.server",
    "verify_audit_chain": "coordinator.store",
}

__all__ = [
    "BlobStore",
    "CoordinatorHandler",
    "CoordinatorServicer",
    "CoordinatorStore",
    "EnclaveCallError",
    "EnclaveClient",
    "EnclaveNotTrusted",
    "JobLimits",
    "RunningCoordinator",
    "SqlStore",
    "certificate_path",
    "default_db_url",
    "issue_enrollment",
    "serve",
    "start",
    "tls_identity",
    "verify_audit_chain",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'coordinator' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
