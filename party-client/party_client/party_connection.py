"""This party's identity, attestation policy and connection: what every :class:`Party` call uses.

:class:`PartyConnection` opens a party's home (or creates and registers one),
holds its attestation policy and one gRPC connection to the coordinator,
opened on first use and closed by :meth:`~PartyConnection.close` (or the
``with`` statement), and attests the enclave.
:class:`~party_client.api.Party` adds the library's steps on top of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from party_client.home import PartyHome
from party_client.remote import Coordinator
from protocols.errors import SetupError

if TYPE_CHECKING:
    from protocols.attestation import VerifiedEnclave
    from protocols.keys import SigningKey
    from protocols.policy import AttestationPolicy


class PartyConnection:
    """This party: its identity, its attestation policy and one connection to the coordinator
    (the base of :class:`~party_client.api.Party`)."""

    def __init__(
        self,
        home: PartyHome,
        policy: AttestationPolicy | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.home = home
        self.name: str = home.config()["name"]  # refuses a folder with no identity
        self._policy = policy
        self._timeout = timeout
        self._remote: Coordinator | None = None

    @classmethod
    def from_home(
        cls,
        path: Path | str | None = None,
        policy: Path | str | AttestationPolicy | None = None,
        timeout: float = 60.0,
        passphrase: str | None = None,
    ) -> Self:
        """The party whose home is ``path`` (default: ``DETENTE_HOME`` or
        ``~/.config/detente``), as `detente party init` created it; ``policy`` an
        attestation policy (or its file) instead of the home's ``policy.toml``.

        Keys encrypted under a passphrase (`detente party init --encrypt-keys`) are
        opened with ``passphrase``, else ``DETENTE_PASSPHRASE``, else a prompt on a
        terminal; a wrong one raises :class:`~party_client.keyfile.WrongPassphrase`.
        """
        home = PartyHome(Path(path)) if path is not None else PartyHome.default()
        home.passphrase = passphrase
        if isinstance(policy, str | Path):
            policy = home.policy(Path(policy))
        return cls(home, policy, timeout)

    @classmethod
    def init(
        cls,
        home: Path | str | None,
        name: str,
        coordinator: str,
        coordinator_cert: Path | str | None = None,
        *,
        token: str = "",
        encrypt_keys: bool = False,
        passphrase: str | None = None,
        key: Path | str | SigningKey | None = None,
        policy: Path | str | None = None,
        pq: bool = False,
        timeout: float = 60.0,
    ) -> Self:
        """Create and register this party's identity in ``home`` (None: ``DETENTE_HOME`` or
        ``~/.config/detente``), as `detente party init` does; the party, ready to use.

        ``coordinator_cert`` is the certificate `detente coordinator serve` printed
        (pinned: needed the first time), ``token`` the one-time enrollment token of
        `detente coordinator enroll`, ``policy`` an attestation policy file copied
        into the home. ``encrypt_keys`` writes the keys encrypted under
        ``passphrase`` (else ``DETENTE_PASSPHRASE``); ``key`` signs with an existing
        Ed25519 key (a PEM/DER PKCS#8 or raw file) instead of a new one.

        >>> bank = Party.init("~/bank", "bank", "coord.example:7000", "coordinator.crt",
        ...                   token=TOKEN, policy="policy.toml")   # doctest: +SKIP
        """
        from party_client.onboarding import init_home

        where = PartyHome(Path(home).expanduser()) if home is not None else PartyHome.default()
        init_home(
            where,
            name,
            coordinator,
            Path(coordinator_cert) if coordinator_cert is not None else None,
            token=token,
            encrypt_keys=encrypt_keys,
            passphrase=passphrase,
            key=Path(key) if isinstance(key, str | Path) else key,
            policy=Path(policy) if policy is not None else None,
            pq=pq,
        )
        return cls(where, None, timeout)

    def __repr__(self) -> str:
        return f"<Party {self.name} at {self.home.root}>"

    # A Party is a handle on an identity and a connection: copies (scikit-learn's clone of an
    # estimator holding one) share it.
    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        return self

    @property
    def policy(self) -> AttestationPolicy:
        if self._policy is None:
            self._policy = self.home.policy()
        return self._policy

    @property
    def remote(self) -> Coordinator:
        """The connection every call of this party uses (opened on first use)."""
        if self._remote is None:
            self._remote = Coordinator.for_home(self.home, self._timeout)
        return self._remote

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        if self._remote is not None:
            self._remote.close()
            self._remote = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- the enclave ------------------------------------------------------------

    def attest(self) -> VerifiedEnclave:
        """Verify the enclave's evidence for a fresh nonce under this party's policy and keep
        the record; raises :class:`~protocols.attestation.EvidenceRefused` naming each
        failing rule."""
        from party_client.enclave import attest

        return attest(self.home, self.policy, remote=self.remote)

    def _attested(self) -> None:
        """Attest again if the record is missing or older than the policy allows."""
        try:
            self.home.attested_enclave(self.policy)
        except SetupError:
            self.attest()
