"""A party's private keys on disk, optionally encrypted under a passphrase.

A key file is either the raw private key (mode 0600, as `detente party init`
writes by default) or, with ``--encrypt-keys``, this envelope: the line
``detente-encrypted-key v1`` and a JSON object holding an scrypt salt and
cost (RFC 7914; n = 2^15, r = 8, p = 1 by default) and the key sealed with
AES-256-GCM under the scrypt output, its associated data the magic line and
the key's name (``signing.key``, ``hpke.key``), so one key file cannot stand in
for the other. The passphrase comes from the caller, the environment variable
``DETENTE_PASSPHRASE``, or a prompt on a terminal (:class:`party_client.home.PartyHome`).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from protocols import canonical
from protocols.errors import FormatError, SetupError

MAGIC = b"detente-encrypted-key v1\n"
PASSPHRASE_ENV = "DETENTE_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1
MAX_SCRYPT_N = 1 << 20  # refuse a file that asks for more work (and memory) than this


class WrongPassphrase(SetupError):
    """The passphrase does not open the key file (or the file was altered)."""


def is_encrypted(data: bytes) -> bool:
    return data.startswith(MAGIC)


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())


def seal_key(raw: bytes, passphrase: str, name: str) -> bytes:
    """``raw`` sealed under ``passphrase`` for the key file ``name``."""
    if not passphrase:
        raise SetupError("an empty passphrase protects nothing: choose one")
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    key = _derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    sealed = AESGCM(key).encrypt(nonce, raw, MAGIC + name.encode())
    doc = {
        "kdf": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": canonical.b64(salt),
        "nonce": canonical.b64(nonce),
        "ciphertext": canonical.b64(sealed),
    }
    return MAGIC + json.dumps(doc, sort_keys=True).encode() + b"\n"


def open_key(data: bytes, passphrase: str, name: str, where: str) -> bytes:
    """The raw key sealed in ``data`` (the file ``where``); :class:`WrongPassphrase` if
    ``passphrase`` does not open it."""
    try:
        doc: Any = json.loads(data[len(MAGIC) :])
        n, r, p = int(doc["n"]), int(doc["r"]), int(doc["p"])
        salt = canonical.unb64(doc["salt"], "salt")
        nonce = canonical.unb64(doc["nonce"], "nonce")
        sealed = canonical.unb64(doc["ciphertext"], "ciphertext")
    except (ValueError, KeyError, TypeError, FormatError) as exc:
        raise SetupError(f"{where} is not a readable encrypted key file: {exc}") from None
    if doc.get("kdf") != "scrypt" or not (2 <= n <= MAX_SCRYPT_N and n & (n - 1) == 0):
        raise SetupError(f"{where}: unsupported key derivation (scrypt with n ≤ 2^20 only)")
    try:
        return AESGCM(_derive(passphrase, salt, n, r, p)).decrypt(
            nonce, sealed, MAGIC + name.encode()
        )
    except InvalidTag:
        raise WrongPassphrase(
            f"wrong passphrase for {where} (or the file was altered): check "
            f"{PASSPHRASE_ENV} or type it again"
        ) from None
