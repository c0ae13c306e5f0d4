"""Private keys encrypted under a passphrase (party_client.keyfile, PartyHome, init --key)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from party_client.home import PartyHome
from party_client.identity import load_signing_key
from party_client.keyfile import MAGIC, WrongPassphrase, open_key, seal_key
from protocols.errors import SetupError
from protocols.keys import SigningKey


def test_a_sealed_key_opens_with_its_passphrase_and_name_only() -> None:
    raw = bytes(range(32))
    sealed = seal_key(raw, "correct horse", "signing.key")
    assert sealed.startswith(MAGIC) and raw not in sealed
    assert open_key(sealed, "correct horse", "signing.key", "f") == raw
    with pytest.raises(WrongPassphrase, match="wrong passphrase for f"):
        open_key(sealed, "wrong horse", "signing.key", "f")
    with pytest.raises(WrongPassphrase):  # the HPKE key file cannot stand in for it
        open_key(sealed, "correct horse", "hpke.key", "f")
    with pytest.raises(SetupError, match="empty passphrase"):
        seal_key(raw, "", "signing.key")


def test_a_home_with_encrypted_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DETENTE_PASSPHRASE", raising=False)
    made = PartyHome(tmp_path)
    made.create_identity("bank", "127.0.0.1:1", passphrase="s3cret")
    assert made.keys_encrypted
    raw = made.signing_key().private_raw()
    assert raw not in (tmp_path / "keys" / "signing.key").read_bytes()
    # A new object (a new process) needs the passphrase: given, or from the environment.
    assert PartyHome(tmp_path, passphrase="s3cret").signing_key().private_raw() == raw
    monkeypatch.setenv("DETENTE_PASSPHRASE", "s3cret")
    assert PartyHome(tmp_path).hpke_key().public_key == made.hpke_key().public_key
    monkeypatch.setenv("DETENTE_PASSPHRASE", "guess")
    with pytest.raises(WrongPassphrase, match="DETENTE_PASSPHRASE"):
        PartyHome(tmp_path).signing_key()


def test_without_a_passphrase_and_no_terminal_the_error_says_what_to_set(tmp_path: Path) -> None:
    PartyHome(tmp_path).create_identity("bank", "127.0.0.1:1", passphrase="s3cret")
    code = (
        "import sys; from pathlib import Path; from party_client.home import PartyHome\n"
        f"PartyHome(Path({str(tmp_path)!r})).signing_key()"
    )
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0
    assert "is encrypted under a passphrase: set DETENTE_PASSPHRASE" in done.stderr


def test_existing_keys_are_encrypted_in_place(tmp_path: Path) -> None:
    home = PartyHome(tmp_path)
    home.create_identity("bank", "127.0.0.1:1")
    before = home.signing_key().private_raw()
    PartyHome(tmp_path).create_identity("bank", "127.0.0.1:1", passphrase="later")
    assert PartyHome(tmp_path).keys_encrypted
    assert PartyHome(tmp_path, passphrase="later").signing_key().private_raw() == before


def test_an_existing_ed25519_key_in_pem_der_or_raw(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    want = SigningKey(key).verify_key
    pkcs8 = serialization.PrivateFormat.PKCS8
    pem = tmp_path / "k.pem"
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())
    )
    locked = tmp_path / "locked.pem"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, pkcs8, serialization.BestAvailableEncryption(b"pw")
        )
    )
    raw = tmp_path / "k.raw"
    raw.write_bytes(SigningKey(key).private_raw())
    assert load_signing_key(pem).verify_key == want
    assert load_signing_key(locked, "pw").verify_key == want
    assert load_signing_key(raw).verify_key == want
    with pytest.raises(SetupError, match="DETENTE_PASSPHRASE"):
        load_signing_key(locked)
    home = PartyHome(tmp_path / "home")
    home.create_identity("bank", "127.0.0.1:1", signing_key=load_signing_key(pem))
    assert home.signing_key().verify_key == want
    with pytest.raises(SetupError, match="already holds another signing key"):
        home.create_identity("bank", "127.0.0.1:1", signing_key=SigningKey.generate())
