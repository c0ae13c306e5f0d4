"""The one exception tree of Detente.

Every failure a user can meet is a subclass of :class:`DetenteError` named for
what happened. Messages say what went wrong and what to do next; internal
details go to logs, never across the wire.
"""

from __future__ import annotations


class DetenteError(Exception):
    """Root of every error Detente raises on purpose."""


class SetupError(DetenteError):
    """A precondition is missing; the message names the command that provides it."""


class FormatError(DetenteError):
    """Bytes or a document do not have the layout their format requires."""


class IntegrityError(DetenteError):
    """Authenticated data failed its check: tampered, reordered, truncated or wrong key."""


class SignatureError(DetenteError):
    """A signed statement is not signed by the key it must be signed by."""


class AttestationError(DetenteError):
    """Evidence from an enclave did not verify or was refused by the policy."""


class PolicyError(DetenteError):
    """A policy or config file is invalid."""


class ConsentError(DetenteError):
    """A job lacks a valid approval, or asks for something its terms do not allow."""


class DatasetError(DetenteError):
    """A party's data set fails validation."""


# Refusals of a request: what the coordinator answers when a request does not
# fit what it holds. Each maps to one gRPC status code (protocols.grpc_status).


class NotFound(DetenteError):
    """A party, data set, job or output the request names does not exist."""


class AlreadyExists(DetenteError):
    """The id or name the request wants to create is already taken."""


class InvalidRequest(DetenteError):
    """The request is well-formed bytes but does not fit what the coordinator holds."""


class NotAllowed(ConsentError):
    """The signer is not entitled to do this (for example, approve a job it owns no data of)."""


class NotRegistered(ConsentError):
    """The signer of a statement is not a registered party yet."""


class WrongState(ConsentError):
    """The job is not in a state that allows this request yet."""


class BudgetExhausted(ConsentError):
    """A query of a sealed model asks for more rows than the querier's budget has left."""


class ModelRetired(WrongState):
    """The sealed model was retired by its owners: its file and key are destroyed."""


class WorkerBusy(DetenteError):
    """An enclave worker takes no new job now: its job slots or memory are taken, or it is
    stopping. Nothing was read of the job; run it again later, or on another worker."""


class EnclaveUnavailable(DetenteError):
    """No enclave is configured, or the configured enclave could not be reached."""
