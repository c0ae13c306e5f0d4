"""The gRPC edge's shared rules: the error catalogue (error ⇄ status code) and channel options.

Servers end a refused call with :func:`abort`: the status code the catalogue
gives the error, the error's message (written for users, never internal
detail), and the catalogue class's name in the ``detente-error`` trailer.
Clients turn the code and trailer back into that class with
:func:`error_class`, so no component ever matches error strings from the wire
(protocols/SPEC.md §9.1).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn

import grpc

from protocols import errors

# Most specific first: the first class the error is an instance of decides the
# code. The status codes are the API: clients and tests rely on each one.
CATALOGUE: tuple[tuple[type[errors.DetenteError], grpc.StatusCode], ...] = (
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.BudgetExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.WorkerBusy, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.ModelRetired, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.NotAllowed, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotRegistered, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.WrongState, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ConsentError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.AttestationError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.DatasetError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.PolicyError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.SetupError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.IntegrityError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.SignatureError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.FormatError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.EnclaveUnavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.DetenteError, grpc.StatusCode.FAILED_PRECONDITION),
)

# The trailing-metadata key that names the catalogue class of a refusal.
ERROR_TRAILER = "detente-error"


def catalogue_class(exc: errors.DetenteError) -> type[errors.DetenteError]:
    """The catalogue entry that decides ``exc``'s status (its nearest listed class)."""
    for kind, _ in CATALOGUE:
        if isinstance(exc, kind):
            return kind
    raise AssertionError("DetenteError ends the catalogue")  # pragma: no cover


def code_for(exc: errors.DetenteError) -> grpc.StatusCode:
    """The status code a server answers ``exc`` with."""
    return dict(CATALOGUE)[catalogue_class(exc)]


def abort(context: grpc.ServicerContext, exc: errors.DetenteError) -> NoReturn:
    """End the call for ``exc``: its code, its message, its catalogue class in the trailer."""
    context.set_trailing_metadata(((ERROR_TRAILER, catalogue_class(exc).__name__),))
    context.abort(code_for(exc), str(exc))
    raise AssertionError("context.abort returned")  # pragma: no cover


def error_class(
    code: grpc.StatusCode | None, trailing_metadata: Iterable[Any] | None = None
) -> type[errors.DetenteError]:
    """The catalogue class a client raises for a refused call: the reverse of :func:`abort`.

    ``trailing_metadata`` is the call's (key, value) pairs, as
    ``grpc.Call.trailing_metadata()`` returns them. Its ``detente-error``
    trailer names the class, believed only if the catalogue lists that class
    with exactly this ``code``. A status no server chose from the catalogue (a
    transport failure, an interceptor's UNAUTHENTICATED, a crash) is a plain
    :class:`DetenteError`.
    """
    names = [value for key, value in trailing_metadata or () if key == ERROR_TRAILER]
    for kind, kind_code in CATALOGUE:
        if kind_code == code and kind.__name__ in names:
            return kind
    return errors.DetenteError


MAX_MESSAGE = 8 << 20
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]
