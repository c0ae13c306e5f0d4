"""A party's identity: create and register it, list the other parties, pin their fingerprints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from party_client.home import PartyHome
from party_client.pins import KeyMismatch
from party_client.remote import Coordinator, connected
from protocols.documents import Registration, check_id
from protocols.errors import SetupError
from protocols.keys import SigningKey
from protocols.statements import Envelope


def init(
    home: PartyHome,
    name: str,
    coordinator: str,
    pq: bool = False,
    enrollment_token: str = "",
    *,
    passphrase: str | None = None,
    signing_key: SigningKey | None = None,
) -> Registration:
    """Create this party's keys in ``home`` (encrypted under ``passphrase`` if given; signing
    with ``signing_key`` if given, see :func:`load_signing_key`) and register them."""
    check_id(name, "party name")
    home.create_identity(name, coordinator, pq, passphrase=passphrase, signing_key=signing_key)
    return register(home, enrollment_token)


def load_signing_key(path: Path, passphrase: str | None = None) -> SigningKey:
    """An existing Ed25519 private key: PEM or DER PKCS#8 (encrypted under ``passphrase`` if it
    is), or the raw 32 bytes `detente party init` writes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SetupError(f"cannot read the key {path}: {exc.strerror}") from None
    if len(data) == 32:
        return SigningKey.from_raw(data)
    password = passphrase.encode() if passphrase else None
    loaders = (serialization.load_pem_private_key, serialization.load_der_private_key)
    for load in loaders:
        try:
            try:
                key = load(data, password)
            except TypeError:  # a passphrase given for a key that is not encrypted
                if password is None:
                    raise
                key = load(data, None)
        except TypeError:
            raise SetupError(
                f"the key {path} is encrypted: set DETENTE_PASSPHRASE to its passphrase"
            ) from None
        except ValueError:
            continue
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise SetupError(
                f"the key {path} is a {type(key).__name__}, not Ed25519: a party signs with "
                "Ed25519 (`openssl genpkey -algorithm ed25519`)"
            )
        return SigningKey(key)
    raise SetupError(
        f"the key {path} is neither a PEM or DER PKCS#8 Ed25519 key nor 32 raw bytes "
        "(or its passphrase is wrong)"
    )


def register(home: PartyHome, enrollment_token: str = "") -> Registration:
    config = home.config()
    signing = home.signing_key()
    registration = Registration(config["name"], signing.verify_key, home.hpke_key().public_key)
    with Coordinator.for_home(home) as remote:
        remote.register(registration.sign(signing).to_bytes(), enrollment_token)
    # A party trusts its own keys under its own name.
    home.known_parties.remember(registration.name, registration.fingerprint)
    return registration


@dataclass(frozen=True)
class KnownParty:
    """A registered party as this party sees it: verified registration and pin status."""

    name: str
    signing_key: str
    fingerprint: str
    pin: str  # "pinned" (matches the pin), "new" (pinned now, first use), "MISMATCH"
    you: bool


def parties(home: PartyHome, *, remote: Coordinator | None = None) -> list[KnownParty]:
    """Every registration the coordinator lists, verified and compared with the pins.

    Names seen for the first time are pinned (trust on first use); a name
    whose registration differs from its pin is reported as ``MISMATCH``
    (and never used by :func:`~party_client.propose` or accepted by
    :func:`~party_client.review`).
    """
    me = home.signing_key().verify_key
    with connected(home, remote) as coordinator:
        listed = coordinator.parties()
    known = home.known_parties
    seen = []
    for party in listed:
        registration = Registration.verify(Envelope.from_bytes(party.registration))
        try:
            status: str = known.remember(registration.name, registration.fingerprint)
        except KeyMismatch:
            status = "MISMATCH"
        seen.append(
            KnownParty(
                registration.name,
                registration.signing_key.hex,
                registration.fingerprint,
                status,
                registration.signing_key == me,
            )
        )
    return seen


def pin(home: PartyHome, name: str, fingerprint: str) -> str:
    """Pin a fingerprint learned out of band for ``name``; returns it normalised."""
    check_id(name, "party name")
    return home.known_parties.pin(name, fingerprint).fingerprint


def fetch_registrations(remote: Coordinator) -> dict[str, Registration]:
    """The coordinator's registrations, verified, by signing key (hex)."""
    by_key = {}
    for party in remote.parties():
        registration = Registration.verify(Envelope.from_bytes(party.registration))
        by_key[registration.signing_key.hex] = registration
    return by_key
