"""What every signed document shares: the version, identifiers, party fingerprints."""

from __future__ import annotations

import re
from typing import Any

from protocols import canonical
from protocols.canonical import field as get
from protocols.errors import FormatError
from protocols.keys import HpkePublicKey, VerifyKey

VERSION = 1
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise FormatError(f"{what} must be 1–128 letters, digits, '.', '_' or '-', got {value!r}")
    return value


def check_version(doc: dict[str, Any], what: str) -> None:
    if get(doc, "version", int, what) != VERSION:
        raise FormatError(f"{what} has unsupported version {doc['version']!r}")


def party_fingerprint(signing_key: VerifyKey, hpke_key: HpkePublicKey) -> str:
    """A party's fingerprint: SHA-256 over its two public keys (protocols/SPEC.md §3.1).

    Parties compare fingerprints out of band and pin them per name, so a
    coordinator cannot list another key under a name they know.
    """
    return canonical.sha256_hex(b"detente-party-fingerprint-v1\0" + signing_key.raw + hpke_key.raw)
