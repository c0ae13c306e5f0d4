"""Coordinator errors, under the one Detente exception tree (protocols.errors).

Each class is named for what happened; the servicer maps each to one gRPC
status code (see :mod:`coordinator.servicer`).
"""

from __future__ import annotations

from protocols.errors import ConsentError, DetenteError


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


class EnclaveUnavailable(DetenteError):
    """No enclave is configured, or the configured enclave could not be reached."""
