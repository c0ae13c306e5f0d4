"""`detente party init`, `parties` and `pin`: this party's identity and the ones it trusts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import party_client as party
from party_client.cli.options import PolicyOption
from party_client.pins import show_fingerprint
from protocols.cli_convention import EXIT_ERROR, JsonOption, emit_json, err, out


def init(
    name: Annotated[str, typer.Option(help="Your party's name (a label you sign)")],
    coordinator: Annotated[str, typer.Option(help="Coordinator address HOST:PORT")],
    enrollment_token: Annotated[
        str,
        typer.Option(
            "--enrollment-token",
            envvar="DETENTE_ENROLLMENT_TOKEN",
            help="One-time token from the coordinator's operator "
            "(`detente coordinator enroll --name NAME`); needed to register",
        ),
    ] = "",
    policy: PolicyOption = None,
    pq: Annotated[
        bool,
        typer.Option(
            "--pq",
            help="Post-quantum HPKE key (ML-KEM-768+X25519) for your data keys and results",
        ),
    ] = False,
    coordinator_cert: Annotated[
        Path | None,
        typer.Option(
            "--coordinator-cert",
            help="The coordinator's TLS certificate (printed by `detente coordinator serve`) "
            "to pin; needed on first init",
        ),
    ] = None,
    encrypt_keys: Annotated[
        bool,
        typer.Option(
            "--encrypt-keys",
            help="Keep the private keys encrypted under a passphrase (scrypt + AES-256-GCM), "
            "taken from DETENTE_PASSPHRASE or asked for; every later command needs it the same "
            "way. On an existing identity, encrypts its keys in place",
        ),
    ] = False,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="Sign with this existing Ed25519 private key (PEM or DER PKCS#8, encrypted "
            "under DETENTE_PASSPHRASE if it is, or 32 raw bytes) instead of a new one",
        ),
    ] = None,
) -> None:
    """Create this party's keys (mode 0600), pin the coordinator's TLS certificate and register."""
    import os

    from party_client.keyfile import PASSPHRASE_ENV
    from protocols.documents import party_fingerprint

    passphrase = os.environ.get(PASSPHRASE_ENV)
    if encrypt_keys and passphrase is None:
        passphrase = typer.prompt(
            "passphrase for your keys", hide_input=True, confirmation_prompt=True
        )
    me = party.Party.init(
        None,
        name,
        coordinator,
        coordinator_cert,
        token=enrollment_token,
        encrypt_keys=encrypt_keys,
        passphrase=passphrase,
        key=key,
        policy=policy,
        pq=pq,
    )
    signing, hpke = me.home.signing_key().verify_key, me.home.hpke_key().public_key
    out.print(f"party {name!r} registered; signing key {signing.hex}")
    out.print(f"HPKE suite: {hpke.kem.label}")
    out.print(
        f"your fingerprint (give it to other parties out of band): "
        f"{show_fingerprint(party_fingerprint(signing, hpke))}",
        highlight=False,
    )
    if me.home.keys_encrypted:
        out.print(
            f"your keys are encrypted: commands read the passphrase from {PASSPHRASE_ENV} or ask"
        )
    out.print("next: `detente party doctor`, then `detente party attest`")


def parties(json_out: JsonOption = False) -> None:
    """List the registered parties with their fingerprints and whether they match your pins.

    A name seen for the first time is pinned (trust on first use). Compare
    fingerprints with the parties themselves over a channel you trust; pin
    one learned that way with `detente party pin NAME FINGERPRINT`.
    """
    seen = party.parties(party.PartyHome.default())
    if json_out:
        emit_json([p.__dict__ for p in seen])
        return
    for p in seen:
        mark = {"pinned": "pinned", "new": "new, pinned now", "MISMATCH": "[bold red]MISMATCH[/]"}
        you = " (you)" if p.you else ""
        out.print(
            f"{p.name}{you}  {show_fingerprint(p.fingerprint)}  {mark[p.pin]}", highlight=False
        )
    if any(p.pin == "MISMATCH" for p in seen):
        err.print(
            "[bold red]a registration differs from the fingerprint you pinned for its name:[/] "
            "someone may be impersonating that party; confirm with them out of band",
            highlight=False,
        )
        raise typer.Exit(EXIT_ERROR)


def pin(
    name: Annotated[str, typer.Argument(help="The party's name")],
    fingerprint: Annotated[
        str, typer.Argument(help="Its fingerprint, learned from the party out of band")
    ],
) -> None:
    """Pin a party's fingerprint learned out of band (replaces what was first seen)."""
    pinned = party.pin(party.PartyHome.default(), name, fingerprint)
    out.print(f"pinned {name}: {show_fingerprint(pinned)}", highlight=False)
