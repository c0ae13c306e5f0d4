"""Setting a party up: keys, the coordinator's pinned certificate, the policy, registration.

:func:`init_home` is `detente party init` and :meth:`party_client.Party.init`:
it checks what it is given before it writes anything (the certificate, the
policy, an existing key), then creates the keys, pins the certificate and
registers with the coordinator.
"""

from __future__ import annotations

import os
from pathlib import Path

from party_client.home import PartyHome
from party_client.identity import init, load_signing_key
from party_client.keyfile import PASSPHRASE_ENV
from protocols.documents import Registration
from protocols.errors import SetupError
from protocols.keys import SigningKey


def init_home(
    home: PartyHome,
    name: str,
    coordinator: str,
    coordinator_cert: Path | None = None,
    *,
    token: str = "",
    encrypt_keys: bool = False,
    passphrase: str | None = None,
    key: Path | SigningKey | None = None,
    policy: Path | None = None,
    pq: bool = False,
) -> Registration:
    """Create this party's identity in ``home`` and register it; return its registration.

    ``coordinator_cert`` is the coordinator's TLS certificate to pin (needed the
    first time); ``token`` the one-time enrollment token its operator issued
    for ``name``; ``policy`` an attestation policy file to copy into the home.
    With ``encrypt_keys`` the keys are written encrypted under ``passphrase``
    (else ``DETENTE_PASSPHRASE``); ``key`` signs with an existing Ed25519 key
    (a file as `detente party init --key` reads, or a key) instead of a new one.
    Re-running on an existing identity with the same name updates the
    coordinator address (and encrypts the keys in place with ``encrypt_keys``).
    """
    secret = passphrase if passphrase is not None else os.environ.get(PASSPHRASE_ENV)
    if encrypt_keys and not secret:
        raise SetupError(
            f"encrypting the keys needs a passphrase: pass one, or set {PASSPHRASE_ENV}"
        )
    signing_key = load_signing_key(key, secret) if isinstance(key, Path) else key
    if coordinator_cert is not None:
        home.pin_coordinator_certificate(coordinator_cert)
    policy_text = None
    if policy is not None:
        home.policy(policy)  # validated before the identity is made
        policy_text = policy.read_text()
    registration = init(
        home,
        name,
        coordinator,
        pq,
        token,
        passphrase=secret if encrypt_keys else None,
        signing_key=signing_key,
    )
    if policy_text is not None:
        home.policy_path.write_text(policy_text)
    return registration
