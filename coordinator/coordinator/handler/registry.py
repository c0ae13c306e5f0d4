"""Enrollment tokens and party registration: who may join, and the registry members see."""

from __future__ import annotations

import hashlib
import logging
import secrets

from coordinator.store import Audit, CoordinatorStore, EnrollmentRecord, PartyRecord, now_ms
from protocols.documents import Registration, check_id
from protocols.errors import AlreadyExists, InvalidRequest, NotAllowed
from protocols.statements import Envelope

log = logging.getLogger(__name__)
ENROLLMENT_TTL = 7 * 24 * 3600


def issue_enrollment(
    store: CoordinatorStore, name: str, ttl_seconds: int = ENROLLMENT_TTL
) -> tuple[str, EnrollmentRecord]:
    """Make a one-time enrollment token for ``name``; only its SHA-256 is stored.

    Returns the token (shown once to the operator, who hands it to the party)
    and its record.
    """
    check_id(name, "party name")
    if ttl_seconds < 1:
        raise InvalidRequest("an enrollment token must be valid for at least one second")
    token = secrets.token_urlsafe(24)
    at = now_ms()
    record = EnrollmentRecord(
        name, _token_sha256(token), created_at=at, expires_at=at + ttl_seconds * 1000
    )
    store.add_enrollment(
        record, Audit("party.enrollment_issued", name, {"expires_at": record.expires_at})
    )
    return token, record


def _token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Registry:
    """Registers parties that hold an enrollment token, and lists the consortium."""

    def __init__(self, store: CoordinatorStore) -> None:
        self.store = store

    def register_party(self, registration: bytes, enrollment_token: str = "") -> PartyRecord:
        """Register a party with the one-time token the operator issued for its name.

        Registering again with the same name and keys (``detente party init``
        re-run) needs no token.
        """
        envelope = Envelope.from_bytes(registration, "party registration")
        reg = Registration.verify(envelope)
        key = reg.signing_key.hex
        existing = self.store.get_party_by_key(key)
        if existing is not None:
            if existing.name == reg.name and existing.hpke_key == reg.hpke_key.hex:
                return existing
            raise AlreadyExists(
                f"key {key[:16]}… is already registered as {existing.name!r} with other "
                "details; a key registers once"
            )
        by_name = self.store.get_party_by_name(reg.name)
        if by_name is not None:
            raise AlreadyExists(
                f"the name {reg.name!r} is already registered to another key: choose another "
                "name with `detente party init --name …`"
            )
        if not enrollment_token:
            raise NotAllowed(
                f"registering {reg.name!r} needs an enrollment token: ask the coordinator's "
                f"operator to run `detente coordinator enroll --name {reg.name}` and pass the "
                "token to `detente party init --enrollment-token TOKEN`"
            )
        record = PartyRecord(reg.name, key, reg.hpke_key.hex, registration, now_ms())
        self.store.add_party(
            record,
            Audit(
                "party.registered",
                key,
                {
                    "name": reg.name,
                    "hpke_key": reg.hpke_key.hex,
                    "registration_sha256": envelope.digest,
                },
            ),
            _token_sha256(enrollment_token),
        )
        log.info("party registered: %s (%s…)", reg.name, key[:16])
        return record

    def list_parties(self, caller: str) -> list[PartyRecord]:
        """The consortium's members (names and public keys): every member may see them,
        since naming recipients needs them."""
        return self.store.list_parties()
