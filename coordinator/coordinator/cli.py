"""`detente coordinator …`: run the coordinator and check its audit log.

This module only wires commands; the work is in :mod:`coordinator.server`
and :mod:`coordinator.store`, imported lazily so `detente --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    # Tracebacks must never print local variables: they may hold rows or keys.
    pretty_exceptions_show_locals=False,
    help="The untrusted coordinator: party registry, ciphertext store, job scheduler.",
    no_args_is_help=True,
)

HomeOption = Annotated[
    Path, typer.Option("--home", help="Directory for the database, blobs and log.")
]


@app.command()
def serve(
    home: HomeOption = Path("coordinator-home"),
    db_url: Annotated[
        str | None,
        typer.Option("--db-url", help="SQLAlchemy URL (default: SQLite file in --home)."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on; 0 picks one.")] = 0,
    enclave: Annotated[
        str | None,
        typer.Option("--enclave", help="HOST:PORT of the enclave worker that runs jobs."),
    ] = None,
    port_file: Annotated[
        Path | None, typer.Option("--port-file", help="Write the bound port to this file.")
    ] = None,
    enclave_policy: Annotated[
        Path | None,
        typer.Option(
            "--enclave-policy",
            help="Attestation policy TOML the enclave's RA-TLS certificate must pass "
            "(required with --enclave).",
        ),
    ] = None,
) -> None:
    """Serve the coordinator API over TLS until SIGTERM or SIGINT.

    The TLS certificate is made once in --home; parties pin it with
    `detente party init --coordinator-cert FILE`.
    """
    from coordinator.server import serve as run
    from protocols.errors import DetenteError, PolicyError
    from protocols.policy import AttestationPolicy

    policy = None
    if enclave is None:
        typer.echo(
            "no --enclave given: jobs will wait in `approved` until the coordinator is "
            "restarted with `--enclave HOST:PORT --enclave-policy FILE`",
            err=True,
        )
    elif enclave_policy is None:
        typer.echo(
            "--enclave needs --enclave-policy FILE: the coordinator sends job data only to an "
            "enclave whose RA-TLS certificate passes that attestation policy",
            err=True,
        )
        raise typer.Exit(2)
    if enclave_policy is not None:
        try:
            policy = AttestationPolicy.load(enclave_policy)
        except PolicyError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    try:
        run(home, db_url, host, port, enclave, port_file, policy)
    except DetenteError as exc:  # e.g. a TLS key readable by others, or not matching its cert
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("audit-verify")
def audit_verify(
    home: HomeOption = Path("coordinator-home"),
    db_url: Annotated[str | None, typer.Option("--db-url", help="SQLAlchemy URL.")] = None,
) -> None:
    """Check the hash chain of the audit log; print ok or the first broken entry."""
    from coordinator.server import default_db_url
    from coordinator.store import SqlStore
    from protocols.errors import IntegrityError

    if db_url is None and not (home / "coordinator.db").exists():
        typer.echo(
            f"no coordinator database in {home}: run `detente coordinator serve --home {home}`",
            err=True,
        )
        raise typer.Exit(2)
    store = SqlStore(db_url or default_db_url(home))
    try:
        count = store.verify_audit_chain()
    except IntegrityError as exc:
        typer.echo(f"audit log BROKEN: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    typer.echo(f"ok: {count} audit log entries, hash chain intact")
