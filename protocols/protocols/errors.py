"""The one exception tree of Detente.

Every failure a user can meet is a subclass of :class:`DetenteError` named for
what happened. Messages say what went wrong and what to do next; internal
details go to logs, never across the wire.
"""

from __future__ import annotations


class DetenteError(Exception):
    """Root of every error Detente raises on purpose."""


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
