"""Canonical JSON: the one byte form of every signed document.

Sorted keys, no insignificant whitespace, UTF-8. Signatures and digests are
always computed over these exact bytes, and verifiers check the bytes before
they parse them (DSSE habit), so two encoders can never disagree.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

from protocols.errors import FormatError


def dumps(document: Any) -> bytes:
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def loads(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise FormatError(f"{what} must be a JSON object")
    return document


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise FormatError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise FormatError(f"{what} is not valid base64") from None


def unhex(text: Any, what: str, length: int | None = None) -> bytes:
    if not isinstance(text, str):
        raise FormatError(f"{what} must be a hex string")
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise FormatError(f"{what} is not valid hex") from None
    if length is not None and len(data) != length:
        raise FormatError(f"{what} must be {length} bytes, got {len(data)}")
    return data


_HEX = re.compile(r"[0-9a-f]*")


def strict_hex(text: Any, what: str) -> bytes:
    """Lowercase hex, nothing else (``bytes.fromhex`` also takes uppercase and spaces: two
    spellings of one value would give two digests of one document)."""
    if not isinstance(text, str) or len(text) % 2 or not _HEX.fullmatch(text):
        raise FormatError(f"{what} must be lowercase hex, got {str(text)[:80]!r}")
    return bytes.fromhex(text)


def digest_field(document: dict[str, Any], name: str, what: str) -> str:
    """``document[name]`` checked to be a SHA-256 (or MRENCLAVE): 64 lowercase hex digits."""
    value = field(document, name, str, what)
    if len(value) != 64:
        raise FormatError(f"{what} field {name!r} must be 64 lowercase hex digits")
    strict_hex(value, f"{what} field {name!r}")
    return value


def size_field(document: dict[str, Any], name: str, what: str) -> int:
    """``document[name]`` checked to be a non-negative integer."""
    value = field(document, name, int, what)
    if value < 0:
        raise FormatError(f"{what} field {name!r} must not be negative")
    return int(value)


def field(document: dict[str, Any], name: str, kind: type, what: str) -> Any:
    """Return ``document[name]`` checked to be of ``kind``, or raise FormatError."""
    if name not in document:
        raise FormatError(f"{what} has no field {name!r}")
    value = document[name]
    if kind is int and isinstance(value, bool):
        raise FormatError(f"{what} field {name!r} must be an integer")
    if not isinstance(value, kind):
        raise FormatError(f"{what} field {name!r} must be {kind.__name__}")
    return value
