"""Request authentication at the coordinator's gRPC edge: one server interceptor.

Every call must carry a party's signature (protocols/SPEC.md §14,
:mod:`protocols.request_auth`) over the method and the SHA-256 of the exact
request bytes received — for a client stream, of its first message. The
interceptor refuses with UNAUTHENTICATED, before the servicer runs, a request
that is unsigned, signed by a key that is not a registered party, badly
signed, outside the ±5-minute window, or replayed. Methods listed in
``self_registering`` (RegisterParty) accept an unregistered key, but only the
key the request itself registers.

Authentication here is about who may use the coordinator; it protects no
secret (docs/architecture.md, roles): the enclave still checks every signed statement itself.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from protocols.request_auth import (
    SERVER_TIME,
    WINDOW_SECONDS,
    NonceCache,
    ReplayCacheFull,
    ReplayedRequest,
    UnauthenticatedRequest,
    parse_metadata,
    verify_request,
)

log = logging.getLogger(__name__)


class Nonces(Protocol):
    """Where verified requests' nonces are remembered (NonceCache: in memory)."""

    def remember(self, key: str, nonce: str, timestamp: int, now: float) -> None: ...


class NonceTable(Protocol):
    """The store's side of :class:`DatabaseNonces` (SqlStore has it)."""

    def remember_nonce(self, signer: str, nonce: str, forget_after: int, now: int) -> bool: ...


class DatabaseNonces:
    """Nonces remembered in the coordinator's database, so that a request captured
    before a restart (or sent to another replica sharing the database) is refused.

    Each nonce is kept until its request's timestamp + the window (a request is
    accepted only while ``|now - timestamp| <= window``, SPEC §14.3), then pruned.
    """

    def __init__(self, table: NonceTable, window: int = WINDOW_SECONDS) -> None:
        self._table = table
        self._window = window

    def remember(self, key: str, nonce: str, timestamp: int, now: float) -> None:
        if not self._table.remember_nonce(key, nonce, timestamp + self._window, int(now)):
            raise ReplayedRequest(
                "replayed request: this nonce was already used within the last "
                f"{self._window} s; a client signs every request afresh"
            )


@dataclass(frozen=True)
class _Received:
    """A request message, with the SHA-256 of the bytes it was parsed from if a
    signature covers them (the first message of a call only, SPEC §14.2)."""

    sha256: str | None
    message: Any


class AuthenticatedContext:
    """A servicer context whose request signature was checked, with the signer's key.

    The servicer learns who calls only from here (``caller``, hex Ed25519 key),
    never from unchecked metadata. Everything else is the gRPC context's.
    """

    def __init__(self, context: Any, caller: str) -> None:
        self._context = context
        self.caller = caller

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def caller_of(context: Any) -> str:
    """The checked signer of the request ``context`` belongs to."""
    if not isinstance(context, AuthenticatedContext):
        raise UnauthenticatedRequest("this request was not authenticated by the interceptor")
    return context.caller


def _capture(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], _Received]:
    """One call's request deserializer: it hashes the first message, the only one a
    request signature covers (SPEC §14.2: a unary request is one message; of a client
    stream, the ciphertext that follows the signed manifest is checked against the
    manifest instead). Hashing every piece of an upload would cost as much as storing it.

    gRPC asks for the method handler, so for this deserializer, once per call and
    deserializes that call's messages in order: "first" is per call.
    """
    hashed = False

    def parse(raw: bytes) -> _Received:
        nonlocal hashed
        digest = None
        if not hashed:
            digest, hashed = hashlib.sha256(raw).hexdigest(), True
        return _Received(digest, deserializer(raw) if deserializer else raw)

    return parse


class RequestAuthInterceptor(grpc.ServerInterceptor):
    """Checks each request's signature before the servicer sees it.

    ``is_registered(key_hex)`` says whether a key belongs to a registered
    party. ``self_registering`` maps a full method name to a function giving
    the key that request registers (or None if the request is unreadable; the
    servicer then refuses its body).
    """

    def __init__(
        self,
        is_registered: Callable[[str], bool],
        self_registering: Mapping[str, Callable[[Any], str | None]] | None = None,
        clock: Callable[[], float] = time.time,
        nonces: Nonces | None = None,
        reply_trailer: Callable[[], Sequence[tuple[str, str]]] | None = None,
    ) -> None:
        self._is_registered = is_registered
        self._self_registering = dict(self_registering or {})
        self._clock = clock
        self._nonces: Nonces = nonces if nonces is not None else NonceCache()
        # Trailing metadata added to every successful reply (the signed audit head),
        # read after the servicer ran, so it covers what the call appended.
        self._reply_trailer = reply_trailer

    def _time(self) -> tuple[str, str]:
        """This coordinator's clock as a trailer: a party compares its own with it."""
        return (SERVER_TIME, str(int(self._clock() * 1000)))

    def _trail(self, context: Any) -> None:
        extra = tuple(self._reply_trailer()) if self._reply_trailer is not None else ()
        context.set_trailing_metadata((*extra, self._time()))

    # -- the checks -----------------------------------------------------------

    def check(self, method: str, metadata: Any, received: _Received) -> str:
        """Raise UnauthenticatedRequest (or ReplayCacheFull) unless the request is good;
        return the signer's key (hex)."""
        request = parse_metadata(metadata)
        key = request.key.hex
        registers = self._self_registering.get(method)
        if registers is None and not self._is_registered(key):
            raise UnauthenticatedRequest(
                f"unknown key: {key[:16]}… is not a registered party; register first with "
                "`detente party init`"
            )
        if received.sha256 is None:
            raise UnauthenticatedRequest("only the first message of a call carries its signature")
        now = self._clock()
        verify_request(request, method, received.sha256, now)
        if registers is not None:
            registered = registers(received.message)
            if registered is not None and registered != key:
                raise UnauthenticatedRequest(
                    f"a registration must be sent signed by the key it registers "
                    f"({registered[:16]}…), not by {key[:16]}…"
                )
        self._nonces.remember(key, request.nonce, request.timestamp, now)
        return key

    def _guard(self, method: str, metadata: Any, received: _Received, context: Any) -> Any:
        """The context wrapped with the checked caller (an AuthenticatedContext), or abort."""
        try:
            return AuthenticatedContext(context, self.check(method, metadata, received))
        except UnauthenticatedRequest as exc:
            log.info("%s refused: UNAUTHENTICATED (%s)", method, exc)
            # With the clock: a party refused for a stale timestamp sees how far off it is.
            context.set_trailing_metadata((self._time(),))
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except ReplayCacheFull as exc:
            log.warning("%s refused: %s", method, exc)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        raise AssertionError("context.abort returned")  # pragma: no cover

    # -- wiring ---------------------------------------------------------------

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = str(handler_call_details.method)
        metadata = handler_call_details.invocation_metadata
        parse = _capture(handler.request_deserializer)
        guard, trail = self._guard, self._trail

        if handler.unary_unary is not None:
            unary_unary = handler.unary_unary

            def unary(request: _Received, context: Any) -> Any:
                reply = unary_unary(request.message, guard(method, metadata, request, context))
                trail(context)
                return reply

            return grpc.unary_unary_rpc_method_handler(unary, parse, handler.response_serializer)
        if handler.unary_stream is not None:
            unary_stream = handler.unary_stream

            def server_stream(request: _Received, context: Any) -> Iterator[Any]:
                checked = guard(method, metadata, request, context)
                yield from unary_stream(request.message, checked)
                trail(context)

            return grpc.unary_stream_rpc_method_handler(
                server_stream, parse, handler.response_serializer
            )

        def messages(first: _Received, rest: Iterator[_Received]) -> Iterator[Any]:
            for item in itertools.chain([first], rest):
                yield item.message

        def open_stream(requests: Iterator[_Received], context: Any) -> tuple[Iterator[Any], Any]:
            first = next(requests, None)
            if first is None:
                context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "a streaming request must start with the message its signature covers",
                )
            assert first is not None
            return messages(first, requests), guard(method, metadata, first, context)

        if handler.stream_unary is not None:
            stream_unary = handler.stream_unary

            def client_stream(requests: Iterator[_Received], context: Any) -> Any:
                reply = stream_unary(*open_stream(requests, context))
                trail(context)
                return reply

            return grpc.stream_unary_rpc_method_handler(
                client_stream, parse, handler.response_serializer
            )
        stream_stream = handler.stream_stream
        assert stream_stream is not None

        def bidi(requests: Iterator[_Received], context: Any) -> Iterator[Any]:
            yield from stream_stream(*open_stream(requests, context))
            trail(context)

        return grpc.stream_stream_rpc_method_handler(bidi, parse, handler.response_serializer)
