"""Signed requests: every party request to the coordinator carries an Ed25519 signature.

TLS authenticates the coordinator to the party; this authenticates the party
to the coordinator, per request, and stops replays. The metadata, the signed
bytes and the checks are specified in protocols/SPEC.md §14.

This module holds the pure parts (message, signing, checking, replay cache)
and the client interceptor that signs; the coordinator's server interceptor
calls :func:`verify_request` and :class:`NonceCache`.
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import itertools
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from protocols.errors import DetenteError, SignatureError
from protocols.keys import SigningKey, VerifyKey

PREFIX = b"detente/v1 request-signature"
KEY_ID = "detente-key-id"
TIMESTAMP = "detente-timestamp"
NONCE = "detente-nonce"
SIGNATURE = "detente-signature"
NONCE_SIZE = 16
# A request is accepted within ±5 minutes of the server's clock; its nonce is
# remembered for as long as it could be accepted.
WINDOW_SECONDS = 300
MAX_REMEMBERED_NONCES = 200_000
# Trailing metadata of every coordinator reply, refusals of a request's signature
# included: the coordinator's clock (Unix milliseconds, decimal). Not signed: it only
# lets a party see how far its own clock is from the one that judges its timestamps
# (`detente party doctor`), and trusts nothing on it.
SERVER_TIME = "detente-time"

_METHOD = re.compile(r"/[A-Za-z0-9_.]+/[A-Za-z0-9_]+")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")


def server_time_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> int | None:
    """The coordinator's clock (Unix ms) a reply's trailing metadata carries, or None."""
    for name, value in metadata or ():
        if name == SERVER_TIME:
            text = value.decode() if isinstance(value, bytes) else value
            return int(text) if _DECIMAL.fullmatch(text) else None
    return None


class UnauthenticatedRequest(DetenteError):
    """A request is unsigned, signed by an unknown key, badly signed, stale or replayed."""


class ReplayedRequest(UnauthenticatedRequest):
    """A signed request was sent a second time within the acceptance window."""


class ReplayCacheFull(DetenteError):
    """Too many signed requests within one window to remember them all: retry later."""


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def signed_message(method: str, body_digest: str, timestamp: int, nonce: str) -> bytes:
    """The exact bytes a party signs (SPEC §14.2); ValueError for malformed fields."""
    if not _METHOD.fullmatch(method):
        raise ValueError(f"not a gRPC method name: {method!r}")
    if not _HEX64.fullmatch(body_digest):
        raise ValueError("the body digest must be 64 lowercase hex characters")
    if not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("the timestamp must be a non-negative integer")
    if not _HEX32.fullmatch(nonce):
        raise ValueError(f"the nonce must be {NONCE_SIZE} bytes as lowercase hex")
    return b"\n".join(
        [PREFIX, method.encode(), body_digest.encode(), str(timestamp).encode(), nonce.encode()]
    )


def sign_request(
    key: SigningKey, method: str, body: bytes, now: float | None = None
) -> list[tuple[str, str]]:
    """The four metadata entries that sign ``body`` for ``method``, with a fresh nonce."""
    timestamp = int(time.time() if now is None else now)
    nonce = secrets.token_bytes(NONCE_SIZE).hex()
    signature = key.sign(signed_message(method, body_sha256(body), timestamp, nonce))
    return [
        (KEY_ID, key.verify_key.hex),
        (TIMESTAMP, str(timestamp)),
        (NONCE, nonce),
        (SIGNATURE, signature.hex()),
    ]


@dataclass(frozen=True)
class RequestSignature:
    """The signature metadata of one request, parsed but NOT verified."""

    key: VerifyKey
    timestamp: int
    nonce: str
    signature: bytes


def parse_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> RequestSignature:
    """Read the four entries; UnauthenticatedRequest naming what is missing or malformed."""
    values: dict[str, str] = {}
    for name, value in metadata or ():
        if name in (KEY_ID, TIMESTAMP, NONCE, SIGNATURE):
            if name in values:
                raise UnauthenticatedRequest(f"request metadata {name!r} appears twice")
            values[name] = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if KEY_ID not in values:
        raise UnauthenticatedRequest(
            f"unsigned request: no {KEY_ID!r} metadata; every request to the coordinator is "
            "signed with the party's key (use the Detente party client)"
        )
    missing = [n for n in (TIMESTAMP, NONCE, SIGNATURE) if n not in values]
    if missing:
        raise UnauthenticatedRequest(
            f"unsigned request: no {', '.join(map(repr, missing))} metadata"
        )
    if not _HEX64.fullmatch(values[KEY_ID]):
        raise UnauthenticatedRequest(f"{KEY_ID} must be an Ed25519 public key as 64 lowercase hex")
    if not _DECIMAL.fullmatch(values[TIMESTAMP]):
        raise UnauthenticatedRequest(f"{TIMESTAMP} must be Unix seconds in decimal")
    if not _HEX32.fullmatch(values[NONCE]):
        raise UnauthenticatedRequest(f"{NONCE} must be {NONCE_SIZE} random bytes as lowercase hex")
    if not _HEX128.fullmatch(values[SIGNATURE]):
        raise UnauthenticatedRequest(f"{SIGNATURE} must be 64 bytes as lowercase hex")
    return RequestSignature(
        VerifyKey.from_hex(values[KEY_ID]),
        int(values[TIMESTAMP]),
        values[NONCE],
        bytes.fromhex(values[SIGNATURE]),
    )


def verify_request(
    request: RequestSignature,
    method: str,
    body_digest: str,
    now: float,
    window: int = WINDOW_SECONDS,
) -> None:
    """Check the timestamp window and the signature; raise UnauthenticatedRequest."""
    skew = request.timestamp - int(now)
    if abs(skew) > window:
        raise UnauthenticatedRequest(
            f"request timestamp is {abs(skew)} s {'ahead of' if skew > 0 else 'behind'} the "
            f"coordinator's clock (allowed: ±{window} s): check this machine's clock"
        )
    try:
        request.key.verify(
            request.signature, signed_message(method, body_digest, request.timestamp, request.nonce)
        )
    except SignatureError:
        raise UnauthenticatedRequest(
            f"bad request signature by key {request.key.hex[:16]}…: the request was altered or "
            "not signed by that key"
        ) from None


class NonceCache:
    """Nonces seen within the window, per key; bounded, pruned by time. Thread-safe."""

    def __init__(
        self, window: int = WINDOW_SECONDS, max_entries: int = MAX_REMEMBERED_NONCES
    ) -> None:
        self._window = window
        self._max = max_entries
        self._seen: set[tuple[str, str]] = set()
        self._expiry: list[tuple[int, str, str]] = []  # heap of (forget after, key, nonce)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, key: str, nonce: str, timestamp: int, now: float) -> None:
        """Record a verified request's nonce; ReplayedRequest if it was seen already."""
        with self._lock:
            while self._expiry and self._expiry[0][0] < now:
                _, old_key, old_nonce = heapq.heappop(self._expiry)
                self._seen.discard((old_key, old_nonce))
            if (key, nonce) in self._seen:
                raise ReplayedRequest(
                    "replayed request: this nonce was already used within the last "
                    f"{self._window} s; a client signs every request afresh"
                )
            if len(self._seen) >= self._max:
                raise ReplayCacheFull(
                    "the coordinator is receiving more signed requests than it can check for "
                    "replays: retry in a minute"
                )
            self._seen.add((key, nonce))
            # Accepted while |now - timestamp| <= window, so remembered until timestamp + window.
            heapq.heappush(self._expiry, (timestamp + self._window, key, nonce))


# --------------------------------------------------------------------------- client side


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ["method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"],
    ),
    grpc.ClientCallDetails,
):
    """Call details with the signature metadata added (the grpc interceptor recipe)."""


def _with_signature(details: Any, metadata: list[tuple[str, str]]) -> Any:
    kept = [
        (k, v)
        for k, v in (details.metadata or ())
        if k not in (KEY_ID, TIMESTAMP, NONCE, SIGNATURE)
    ]
    return _CallDetails(
        details.method,
        details.timeout,
        [*kept, *metadata],
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


def _method_name(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class RequestSigner(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Signs every call on a channel with ``key`` (see the module docstring).

    ``key_for`` may choose the key per call from the method and the first
    request message (``None`` means ``key``).
    """

    def __init__(
        self,
        key: SigningKey,
        key_for: Callable[[str, Any], SigningKey | None] | None = None,
    ) -> None:
        self._key = key
        self._key_for = key_for

    def _sign(self, details: Any, request: Any) -> Any:
        method = _method_name(details)
        key = (self._key_for(method, request) if self._key_for else None) or self._key
        # The same call grpc makes to serialize the message, so the digest is of the bytes sent.
        return _with_signature(details, sign_request(key, method, request.SerializeToString()))

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._sign(client_call_details, request), request)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._sign(client_call_details, request), request)

    def _first(self, details: Any, request_iterator: Iterator[Any]) -> tuple[Any, Iterator[Any]]:
        first = next(request_iterator, None)
        if first is None:
            raise UnauthenticatedRequest("a streaming request needs a first message to sign")
        return self._sign(details, first), itertools.chain([first], request_iterator)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        details, requests = self._first(client_call_details, iter(request_iterator))
        return continuation(details, requests)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        details, requests = self._first(client_call_details, iter(request_iterator))
        return continuation(details, requests)
