"""Property tests for the HPKE key encodings: any bytes either parse or raise a DetenteError."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import hpke
from protocols.errors import DetenteError, IntegrityError
from protocols.keys import HpkePrivateKey, HpkePublicKey, Kem

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PQ = Kem.MLKEM768_X25519
_PQ_KEY = HpkePrivateKey.generate(PQ)
_X_KEY = HpkePrivateKey.generate()
SAMPLES = [_PQ_KEY.public_key.raw, _X_KEY.public_key.raw]
PRIVATE_SAMPLES = [_PQ_KEY.private_raw(), _X_KEY.private_raw()]


def parses_or_detente_error(fn: Callable[[], object]) -> object | None:
    try:
        return fn()
    except DetenteError:
        return None


@st.composite
def mutated(draw: st.DrawFn, bases: list[bytes]) -> bytes:
    """One of ``bases`` with bytes flipped, set, cut, inserted or deleted; tags included."""
    data = bytearray(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        action = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "tag"]))
        i = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[i] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[i:]
        elif action == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        else:  # put a valid tag in front of the wrong body, or strip it
            data = bytearray(b"\x64\x7a") + data if data[:2] != b"\x64\x7a" else data[2:]
    return bytes(data)


def _check_public(data: bytes) -> None:
    key = parses_or_detente_error(lambda: HpkePublicKey(data))
    if isinstance(key, HpkePublicKey):
        # Whatever parses is a usable key of the KEM its encoding names, and re-encodes
        # to exactly the bytes it came from.
        assert key.raw == data and HpkePublicKey.from_hex(key.hex) == key
        assert len(data) == key.kem.public_size
        wrapped = hpke.wrap_key(bytes(32), key, b"info")
        assert len(wrapped) == hpke.wrapped_size(key.kem)


@SETTINGS
@given(st.one_of(st.binary(max_size=1300), st.binary(min_size=1218, max_size=1218)))
def test_public_key_random_bytes(data: bytes) -> None:
    _check_public(data)


@SETTINGS
@given(mutated(SAMPLES))
def test_public_key_mutated(data: bytes) -> None:
    _check_public(data)


@SETTINGS
@given(st.one_of(st.text(max_size=80), mutated(SAMPLES).map(bytes.hex)))
def test_public_key_hex_text(text: str) -> None:
    parses_or_detente_error(lambda: HpkePublicKey.from_hex(text))


def _check_private(data: bytes) -> None:
    key = parses_or_detente_error(lambda: HpkePrivateKey.from_raw(data))
    if isinstance(key, HpkePrivateKey):
        assert key.private_raw() == data and len(data) == key.kem.private_size
        info = hpke.data_key_info("ds", key.public_key)
        assert hpke.unwrap_key(hpke.wrap_key(b"k" * 32, key.public_key, info), key, info)


@SETTINGS
@given(
    st.one_of(
        st.binary(max_size=120), st.binary(min_size=96, max_size=96).map(lambda b: b"\x64\x7a" + b)
    )
)
def test_private_key_random_bytes(data: bytes) -> None:
    _check_private(data)


@SETTINGS
@given(mutated(PRIVATE_SAMPLES))
def test_private_key_mutated(data: bytes) -> None:
    _check_private(data)


@SETTINGS
@given(st.binary(max_size=1300))
def test_unwrap_random_bytes_is_an_integrity_error(data: bytes) -> None:
    for key in (_PQ_KEY, _X_KEY):
        try:
            hpke.unwrap_key(data, key, b"info")
        except IntegrityError:
            continue
        raise AssertionError("random bytes unwrapped")
