"""The error catalogue: every class → status code → the same class, over a real gRPC call too."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from protocols import errors, grpc_status
from protocols.grpc_status import CATALOGUE, ERROR_TRAILER, code_for, error_class

KINDS = [kind for kind, _ in CATALOGUE]

# The codes each server answered with before the two tables became one: clients
# and tests rely on them, so they are pinned here.
EXPECTED = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.BudgetExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.WorkerBusy: grpc.StatusCode.RESOURCE_EXHAUSTED,  # the coordinator queues the job again
    errors.ModelRetired: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NotAllowed: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotRegistered: grpc.StatusCode.FAILED_PRECONDITION,
    errors.WrongState: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ConsentError: grpc.StatusCode.PERMISSION_DENIED,
    errors.AttestationError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.DatasetError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PolicyError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.SetupError: grpc.StatusCode.FAILED_PRECONDITION,  # a missing precondition
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.IntegrityError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.SignatureError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FormatError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.EnclaveUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DetenteError: grpc.StatusCode.FAILED_PRECONDITION,
}


def test_every_error_class_of_the_tree_is_in_the_catalogue_with_its_code() -> None:
    tree = {
        kind
        for _, kind in inspect.getmembers(errors, inspect.isclass)
        if issubclass(kind, errors.DetenteError)
    }
    assert set(KINDS) == tree
    assert dict(CATALOGUE) == EXPECTED
    assert len(KINDS) == len(set(KINDS))


def test_no_entry_is_hidden_behind_a_superclass_listed_before_it() -> None:
    for i, kind in enumerate(KINDS):
        assert not any(issubclass(kind, earlier) for earlier in KINDS[:i]), kind


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_class_to_code_to_class(kind: type[errors.DetenteError]) -> None:
    code = code_for(kind("refused"))
    assert code is EXPECTED[kind]
    assert error_class(code, ((ERROR_TRAILER, kind.__name__),)) is kind


def test_a_subclass_outside_the_catalogue_travels_as_its_nearest_entry() -> None:
    class EnclaveGone(errors.EnclaveUnavailable):
        pass

    assert grpc_status.catalogue_class(EnclaveGone("x")) is errors.EnclaveUnavailable
    assert code_for(EnclaveGone("x")) is grpc.StatusCode.UNAVAILABLE


def test_a_status_not_chosen_from_the_catalogue_is_a_plain_detente_error() -> None:
    # No trailer: a transport failure, an interceptor, a crash.
    assert error_class(grpc.StatusCode.UNAVAILABLE) is errors.DetenteError
    assert error_class(grpc.StatusCode.NOT_FOUND, ()) is errors.DetenteError
    assert error_class(None, None) is errors.DetenteError
    # A trailer that names a class with another code, or no class at all, is not believed.
    lying = ((ERROR_TRAILER, "NotFound"),)
    assert error_class(grpc.StatusCode.PERMISSION_DENIED, lying) is errors.DetenteError
    assert error_class(grpc.StatusCode.INTERNAL, ((ERROR_TRAILER, "object"),)) is (
        errors.DetenteError
    )


# --------------------------------------------------------------------------- over the wire


def _refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
    """Raise the catalogue class named in the request, through grpc_status.abort."""
    kind = next(k for k in KINDS if k.__name__ == request.decode())
    grpc_status.abort(context, kind(f"refused with {kind.__name__}: do the next thing"))


@pytest.fixture(scope="module")
def refusing_server() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(2), options=grpc_status.CHANNEL_OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        "test.Refuser", {"Refuse": grpc.unary_unary_rpc_method_handler(_refuse)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_class_to_code_to_class_over_a_real_call(
    refusing_server: str, kind: type[errors.DetenteError]
) -> None:
    with grpc.insecure_channel(refusing_server) as channel:
        refuse: Any = channel.unary_unary("/test.Refuser/Refuse")
        with pytest.raises(grpc.RpcError) as info:
            refuse(kind.__name__.encode(), timeout=10)
    err: Any = info.value
    assert err.code() is EXPECTED[kind]
    assert err.details() == f"refused with {kind.__name__}: do the next thing"
    assert error_class(err.code(), err.trailing_metadata()) is kind
