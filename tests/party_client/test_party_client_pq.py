"""`detente party init --pq` in a party's home: the HPKE suite is chosen once, at creation."""

from __future__ import annotations

from pathlib import Path

import pytest

from party_client.home import PartyHome
from protocols.errors import SetupError
from protocols.keys import HpkePrivateKey, Kem


def test_pq_home_holds_a_tagged_key_file_of_mode_0600(tmp_path: Path) -> None:
    home = PartyHome(tmp_path / "pq")
    home.create_identity("bank-pq", "127.0.0.1:1", pq=True)
    path = home.root / "keys" / "hpke.key"
    assert path.stat().st_mode & 0o777 == 0o600
    data = path.read_bytes()
    assert data[:2] == b"\x64\x7a" and len(data) == 98
    key = home.hpke_key()
    assert key.kem is Kem.MLKEM768_X25519 and key.private_raw() == data
    # Re-running init (to finish registration) keeps the key, with or without --pq.
    home.create_identity("bank-pq", "127.0.0.1:2", pq=False)
    home.create_identity("bank-pq", "127.0.0.1:3", pq=True)
    assert path.read_bytes() == data and home.config()["coordinator"] == "127.0.0.1:3"


def test_x25519_home_keeps_its_32_byte_key_and_refuses_a_late_pq(tmp_path: Path) -> None:
    home = PartyHome(tmp_path / "x")
    home.create_identity("bank-x", "127.0.0.1:1")
    data = (home.root / "keys" / "hpke.key").read_bytes()
    assert len(data) == 32 and home.hpke_key().kem is Kem.X25519
    with pytest.raises(SetupError, match="already holds an X25519 HPKE key"):
        home.create_identity("bank-x", "127.0.0.1:1", pq=True)
    assert (home.root / "keys" / "hpke.key").read_bytes() == data


def test_a_key_file_written_before_the_pq_option_still_loads(tmp_path: Path) -> None:
    home = PartyHome(tmp_path / "old")
    home.create_identity("bank-old", "127.0.0.1:1")
    legacy = HpkePrivateKey.generate()  # the bare 32-byte form older releases wrote
    (home.root / "keys" / "hpke.key").write_bytes(legacy.private_raw())
    assert home.hpke_key().public_key == legacy.public_key
