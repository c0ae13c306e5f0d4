"""The coordinator's logic, between the thin gRPC servicer and the store.

Every check here is a convenience that gives a party a clear error early;
none of it is a security boundary, because the enclave verifies every
signature, digest and approval itself (docs/architecture.md, roles; docs/protocol.md
§5). The handler works with bytes and plain records only; it never sees plaintext.

``registry`` holds enrollment and registration, ``datasets`` the intake of
data sets, ``jobs`` the job state machine (proposal, approvals, visibility,
cancel, retry, outputs), ``models`` the sealed models (visibility, the query
relay, retirement); :class:`CoordinatorHandler` (``facade``) is the one object
the servicer calls.
"""

from coordinator.handler.facade import NONCE_SIZE, CoordinatorHandler
from coordinator.handler.models import MAX_QUERY_BYTES
from coordinator.handler.registry import ENROLLMENT_TTL, issue_enrollment
from coordinator.limits import JobLimits

__all__ = [
    "ENROLLMENT_TTL",
    "MAX_QUERY_BYTES",
    "NONCE_SIZE",
    "CoordinatorHandler",
    "JobLimits",
    "issue_enrollment",
]
