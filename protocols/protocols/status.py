"""The error catalogue at the gRPC edge: which status code each error maps to.

Servers send the error's message (written for users, never internal detail)
with the code; clients turn codes back into the same exception classes, so no
component ever matches error strings from the wire.
"""

from __future__ import annotations

import grpc

from protocols import errors

_CODES: list[tuple[type[errors.DetenteError], grpc.StatusCode]] = [
    (errors.ConsentError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.AttestationError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.DatasetError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.PolicyError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.IntegrityError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.SignatureError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.FormatError, grpc.StatusCode.INVALID_ARGUMENT),
]


def code_for(exc: errors.DetenteError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


MAX_MESSAGE = 8 << 20
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]
