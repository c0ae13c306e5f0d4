"""`detente coordinator …`: run the coordinator and check its audit log.

This module only wires commands; the work is in :mod:`coordinator.server`
and :mod:`coordinator.store`, imported lazily so `detente --help` stays fast.
Errors and exit codes follow :mod:`protocols.cli_convention`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from protocols.cli_convention import JsonOption, UsageError, command_group, emit_json
from protocols.errors import SetupError

app = command_group("The untrusted coordinator: party registry, ciphertext store, job scheduler.")

HomeOption = Annotated[
    Path, typer.Option("--home", help="Directory for the database, blobs and log.")
]
DbUrlOption = Annotated[
    str | None,
    typer.Option("--db-url", help="SQLAlchemy URL (default: SQLite file in --home)."),
]


@app.command()
def serve(
    home: HomeOption = Path("coordinator-home"),
    db_url: DbUrlOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on; 0 picks one.")] = 0,
    enclave: Annotated[
        list[str] | None,
        typer.Option(
            "--enclave",
            help="HOST:PORT of an enclave worker that runs jobs; repeat it for a pool. Added "
            "to the workers kept in the database (see `detente coordinator workers`).",
        ),
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
    max_job_seconds: Annotated[
        int,
        typer.Option(
            "--max-job-seconds",
            min=1,
            help="Longest a job may hold the enclave; job terms may ask for less.",
        ),
    ] = 3600,
    max_work: Annotated[
        int,
        typer.Option(
            "--max-work",
            min=1,
            help="Largest job accepted, as rounds × rows (checked when it is proposed).",
        ),
    ] = 10_000_000_000,
    dashboard: Annotated[
        str | None,
        typer.Option(
            "--dashboard",
            help="Also serve the read-only operator dashboard on HOST:PORT (loopback only; "
            "port 0 picks one). Its login token is printed and kept in --home/dashboard-token "
            "(or set DETENTE_DASHBOARD_TOKEN).",
        ),
    ] = None,
    worker_check_seconds: Annotated[
        float,
        typer.Option(
            "--worker-check-seconds",
            min=0.2,
            help="How often each worker's health and job slots are checked.",
        ),
    ] = 2.0,
) -> None:
    """Serve the coordinator API over TLS until SIGTERM or SIGINT.

    The TLS certificate is made once in --home; parties pin it with
    `detente party init --coordinator-cert FILE`.
    """
    from coordinator.dashboard import parse_address
    from coordinator.limits import JobLimits
    from coordinator.server import serve as run
    from protocols.policy import AttestationPolicy

    if not enclave and enclave_policy is None:
        typer.echo(
            "no --enclave-policy given: no enclave worker is used, and jobs wait in `approved` "
            "until the coordinator is restarted with `--enclave HOST:PORT --enclave-policy FILE`",
            err=True,
        )
    elif enclave and enclave_policy is None:
        raise UsageError(
            "--enclave needs --enclave-policy FILE: the coordinator sends job data only to an "
            "enclave whose RA-TLS certificate passes that attestation policy"
        )
    policy = AttestationPolicy.load(enclave_policy) if enclave_policy is not None else None
    board = parse_address(dashboard) if dashboard is not None else None
    # A TLS key readable by others, or not matching its certificate, is refused here.
    run(
        home,
        db_url,
        host,
        port,
        enclave or [],
        port_file,
        policy,
        JobLimits(max_job_seconds, max_work),
        dashboard=board,
        worker_check_seconds=worker_check_seconds,
    )


@app.command()
def migrate(
    home: HomeOption = Path("coordinator-home"),
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Bring the coordinator's database to the schema this version needs.

    Run it after an upgrade of Detente (back the database up first), and once
    on a new PostgreSQL database; the coordinator refuses to start until it
    has. A database already at the newest schema is left as it is.
    """
    from coordinator.migrations import upgrade
    from coordinator.server import default_db_url

    if db_url is None:
        home.mkdir(parents=True, exist_ok=True)
    before, after = upgrade(db_url or default_db_url(home))
    if json_out:
        emit_json({"from": before, "to": after})
    elif before == after:
        typer.echo(f"the database is already at the newest schema ({after})")
    else:
        typer.echo(f"migrated the database from {before or 'nothing'} to {after}")


def _open_store(home: Path, db_url: str | None) -> Any:
    """The coordinator's store, opened directly (the operator's own machine)."""
    from coordinator.server import TLS_KEY_NAME, default_db_url, head_signer, tls_identity
    from coordinator.store import SqlStore

    if db_url is None and not (home / "coordinator.db").exists():
        raise SetupError(
            f"no coordinator database in {home}: run `detente coordinator serve --home {home}`"
        )
    if not (home / TLS_KEY_NAME).exists():
        raise SetupError(
            f"no coordinator key in {home}: pass the --home the coordinator serves with"
        )
    # What an operator command appends to the audit log is signed like the server's own.
    key, _ = tls_identity(home)
    return SqlStore(db_url or default_db_url(home), head_signer=head_signer(key))


@app.command()
def enroll(
    name: Annotated[str, typer.Option("--name", help="The name the party will register.")],
    home: HomeOption = Path("coordinator-home"),
    db_url: DbUrlOption = None,
    expires_in: Annotated[
        int, typer.Option("--expires-in", min=1, help="Seconds the token stays valid.")
    ] = 7 * 24 * 3600,
    json_out: JsonOption = False,
) -> None:
    """Issue a one-time enrollment token for a party name.

    Registration is closed to anyone without a token: give the token to the
    party over a channel you trust; it passes it to
    `detente party init --enrollment-token TOKEN`. The coordinator keeps only
    its SHA-256. Issuing again for a name not yet registered replaces the token.
    """
    from coordinator.handler import issue_enrollment

    store = _open_store(home, db_url)
    try:
        token, record = issue_enrollment(store, name, expires_in)
    finally:
        store.close()
    if json_out:
        emit_json({"name": name, "token": token, "expires_at": record.expires_at // 1000})
    else:
        typer.echo(f"enrollment token for {name!r} (valid {expires_in} s, usable once):")
        typer.echo(token)
        typer.echo(f"the party runs: detente party init --name {name} --enrollment-token TOKEN …")


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job to cancel.")],
    home: HomeOption = Path("coordinator-home"),
    db_url: DbUrlOption = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the job's events).")] = "",
) -> None:
    """Cancel a job as the operator: at once if it waits, within a second if it runs."""
    store = _open_store(home, db_url)
    try:
        job = store.request_cancel(job_id, reason[:500], by="the operator")
    finally:
        store.close()
    if job.state == "running":
        typer.echo(f"cancel requested for {job_id}: the coordinator stops it within a second")
    else:
        typer.echo(f"{job_id} cancelled")


workers_app = command_group(
    "The enclave workers the coordinator runs jobs on: list them (the default), add or "
    "remove one. A running coordinator follows these changes within a few seconds.",
    default_command=True,
)
app.add_typer(workers_app, name="workers")


def _worker_json(record: Any) -> dict[str, Any]:
    return {
        "address": record.address,
        "health": record.health,
        "problem": record.problem,
        "backend": record.backend,
        "mrenclave": record.mrenclave,
        "mrsigner": record.mrsigner,
        "tcb_status": record.tcb_status,
        "attested_at": record.attested_at,
        "slots": record.slots,
        "busy": record.busy,
        "job_ids": record.job_ids,
        "draining": record.draining,
        "last_seen": record.last_seen,
        "checked_at": record.checked_at,
        "registered_at": record.registered_at,
    }


def _when(ms: int | None) -> str:
    import datetime

    if ms is None:
        return "never"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


@workers_app.callback()
def workers(
    ctx: typer.Context,
    home: HomeOption = Path("coordinator-home"),
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """List the enclave workers: health, attestation, job slots and current jobs."""
    if ctx.invoked_subcommand is not None:
        return
    store = _open_store(home, db_url)
    try:
        records = store.list_workers()
        running = {r.address: store.jobs_on_worker(r.address) for r in records}
    finally:
        store.close()
    if json_out:
        emit_json(
            {"workers": [{**_worker_json(r), "current_jobs": running[r.address]} for r in records]}
        )
        return
    if not records:
        typer.echo(
            "no enclave worker registered: add one with `detente coordinator workers add "
            "HOST:PORT` (or `serve --enclave HOST:PORT`)"
        )
        return
    for r in records:
        backend = r.backend or "backend unknown"
        if r.simulation:
            backend = "SIMULATION (no hardware protection)"
        typer.echo(f"{r.address}  {r.health}  {backend}")
        if r.problem:
            typer.echo(f"  problem: {r.problem}")
        typer.echo(f"  MRENCLAVE {r.mrenclave or '—'}  MRSIGNER {r.mrsigner or '—'}")
        typer.echo(f"  TCB {r.tcb_status or '—'}; last attested {_when(r.attested_at)} UTC")
        jobs = ", ".join(running[r.address]) or "none"
        typer.echo(f"  slots {r.busy}/{r.slots} busy; running jobs: {jobs}")
        typer.echo(f"  last seen {_when(r.last_seen)} UTC")


@workers_app.command("add")
def workers_add(
    address: Annotated[str, typer.Argument(help="HOST:PORT of the enclave worker.")],
    home: HomeOption = Path("coordinator-home"),
    db_url: DbUrlOption = None,
) -> None:
    """Register a worker; the running coordinator attests it against its enclave policy
    before it gives it a job."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"{address!r} is not HOST:PORT: give for example 127.0.0.1:7001")
    store = _open_store(home, db_url)
    try:
        _, new = store.register_worker(address, "the operator (workers add)")
    finally:
        store.close()
    typer.echo(
        f"worker {address} registered: the coordinator attests it and checks its health "
        "within seconds (see `detente coordinator workers`)"
        if new
        else f"worker {address} is already registered"
    )


@workers_app.command("remove")
def workers_remove(
    address: Annotated[str, typer.Argument(help="HOST:PORT of the enclave worker.")],
    home: HomeOption = Path("coordinator-home"),
    db_url: DbUrlOption = None,
) -> None:
    """Take a worker out of the pool: it gets no new job (jobs running on it go on)."""
    store = _open_store(home, db_url)
    try:
        removed = store.remove_worker(address, "the operator (workers remove)")
    finally:
        store.close()
    if not removed:
        raise UsageError(
            f"no worker {address} is registered: list them with `detente coordinator workers`"
        )
    typer.echo(f"worker {address} removed: it gets no new job")


audit_app = command_group("The coordinator's hash-chained, signed audit log.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    home: HomeOption = Path("coordinator-home"),
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Check the whole audit log: every link of the hash chain, and the signed head.

    Parties check the log against the heads they saw with `detente party audit`.
    """
    from coordinator.server import tls_identity
    from coordinator.store import verify_audit_chain
    from protocols.errors import IntegrityError, SignatureError

    store = _open_store(home, db_url)
    try:
        count = verify_audit_chain(store.audit_entries())
        head = store.audit_head()
    except IntegrityError as exc:
        raise IntegrityError(f"audit log BROKEN: {exc}") from None
    finally:
        store.close()
    signed = head is not None and bool(head.signature)
    if head is not None and signed:
        try:
            head.verify(tls_identity(home)[0].public_key())
        except SignatureError:
            raise IntegrityError(
                f"audit log BROKEN: its head (entry {head.seq}) is not signed by this "
                "coordinator's key: the log was altered"
            ) from None
    if json_out:
        emit_json({"ok": True, "entries": count, "head": head.as_json() if head else None})
        return
    typer.echo(
        f"ok: {count} audit log entries, hash chain intact"
        + (f"; head {head.seq} signed by this coordinator" if head and signed else "")
    )


# The name before `audit verify`; kept so scripts written for it still work.
app.command("audit-verify", hidden=True)(audit_verify)
