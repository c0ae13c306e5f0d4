"""`detente party …`: the data owner's commands. Each verb is small and calls party.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from protocols.errors import DetenteError

app = typer.Typer(
    # Tracebacks must never print local variables: they may hold rows or keys.
    pretty_exceptions_show_locals=False,
    help="Contribute data, approve jobs and collect results as a party.",
    no_args_is_help=True,
)
out = Console(soft_wrap=True)  # lines stay whole when piped or grepped
err = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

SIMULATION_WARNING = (
    "[bold yellow]WARNING: the enclave runs in SIMULATION mode — there is NO hardware "
    "protection. Whoever runs the enclave host can read everything sealed to it. "
    "Use simulation only with test data.[/]"
)

PolicyOption = Annotated[
    Path | None,
    typer.Option("--policy", help="Attestation policy TOML (default: DETENTE_HOME/policy.toml)"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Stable machine-readable output")]


def _errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DetenteError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            verdict = getattr(exc, "verdict", None)
            if verdict:
                _print_verdict(verdict, err)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _home() -> Any:
    from party_client.home import PartyHome

    return PartyHome.default()


def _print_verdict(verdict: Any, console: Console) -> None:
    for rule in verdict:
        mark = "[green]pass[/]" if rule.passed else "[red]FAIL[/]"
        console.print(f"  {mark} {rule.name}: {rule.detail}", highlight=False, soft_wrap=True)


@app.command()
@_errors
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
) -> None:
    """Create this party's keys (mode 0600), pin the coordinator's TLS certificate and register."""
    from party_client import party

    home = _home()
    if coordinator_cert is not None:
        home.pin_coordinator_certificate(coordinator_cert)
    if policy is not None:
        home.policy(policy)  # validate before the identity is made
    registration = party.init(home, name, coordinator, pq, enrollment_token)
    if policy is not None:
        home.policy_path.write_text(policy.read_text())
    from party_client.pins import show_fingerprint

    out.print(f"party {name!r} registered; signing key {registration.signing_key.hex}")
    out.print(f"HPKE suite: {registration.hpke_key.kem.label}")
    out.print(
        f"your fingerprint (give it to other parties out of band): "
        f"{show_fingerprint(registration.fingerprint)}",
        highlight=False,
    )
    out.print("next: `detente party attest`")


@app.command()
@_errors
def attest(
    policy: PolicyOption = None, explain: bool = False, json_out: JsonOption = False
) -> None:
    """Verify the enclave's evidence against your policy and keep the record."""
    from party_client import party

    home = _home()
    enclave = party.attest(home, home.policy(policy))
    if json_out:
        print(json.dumps(party.enclave_summary(enclave), sort_keys=True))
    else:
        out.print(f"enclave attested: MRENCLAVE {enclave.mrenclave}")
        if explain:
            _print_verdict(enclave.verdict, out)
    if enclave.simulation:
        err.print(SIMULATION_WARNING)


@app.command()
@_errors
def upload(
    path: Annotated[Path, typer.Argument(help="CSV or Parquet file")],
    label: Annotated[str, typer.Option(help="Label column")],
    id_column: Annotated[
        str | None, typer.Option("--id", help="Identifier column (not a feature)")
    ] = None,
    dataset_id: Annotated[str | None, typer.Option(help="Data set id (default: random)")] = None,
    publish_schema: Annotated[
        bool, typer.Option(help="Show column names to the coordinator")
    ] = False,
    display_name: Annotated[
        str,
        typer.Option(
            "--name", help="A label for the data set that job participants see (default: none)"
        ),
    ] = "",
    policy: PolicyOption = None,
    json_out: JsonOption = False,
) -> None:
    """Validate a table, seal it to the attested enclave and upload it.

    The file's name stays on your machine; give the data set a public label
    with --name if you want one.
    """
    from party_client import party

    home = _home()
    done = party.upload(
        home,
        home.policy(policy),
        path,
        label,
        id_column,
        dataset_id,
        publish_schema,
        display_name=display_name,
    )
    if json_out:
        print(json.dumps(done.__dict__, sort_keys=True))
    else:
        out.print(
            f"uploaded {done.dataset_id}: {done.rows} rows, {done.columns} columns, "
            f"{done.ciphertext_size} bytes of ciphertext"
        )
    if done.simulation:
        err.print(SIMULATION_WARNING)


@app.command()
@_errors
def propose(
    dataset: Annotated[list[str], typer.Option(help="Data set id (repeat, in join order)")],
    label: Annotated[str, typer.Option(help="Label column")],
    id_column: Annotated[str | None, typer.Option("--id", help="Identifier column")] = None,
    rounds: Annotated[int, typer.Option(help="Boosting rounds")] = 200,
    seed: Annotated[int, typer.Option(help="Training seed")] = 0,
    param: Annotated[list[str] | None, typer.Option(help="XGBoost parameter KEY=VALUE")] = None,
    recipient: Annotated[
        list[str] | None, typer.Option(help="Party to receive the results (default: all owners)")
    ] = None,
    output: Annotated[
        list[str] | None, typer.Option(help="Released output: model, metrics")
    ] = None,
    job_id: Annotated[str | None, typer.Option(help="Job id (default: random)")] = None,
    max_seconds: Annotated[
        int | None,
        typer.Option(
            "--max-seconds", min=1, help="Longest the job may run (default: the coordinator's)"
        ),
    ] = None,
    policy: PolicyOption = None,
    json_out: JsonOption = False,
) -> None:
    """Propose a horizontal XGBoost job over data sets; every owner must approve it.

    Without --recipient the results go to exactly the data owners, and the
    proposal fails if an owner's registration is missing.
    """
    from party_client import party

    params: dict[str, Any] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--param {item!r} must be KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    home = _home()
    terms = party.propose(
        home,
        home.policy(policy),
        dataset,
        label,
        id_column,
        rounds,
        params,
        seed,
        recipient,
        output or ["model"],
        job_id,
        max_seconds=max_seconds,
    )
    if json_out:
        print(json.dumps({"job_id": terms.job_id}))
    else:
        out.print(
            f"proposed {terms.job_id}; next: each owner runs `detente party approve {terms.job_id}`"
        )


def _print_review(reviewed: Any) -> None:
    from datetime import UTC, datetime

    from party_client.pins import show_fingerprint

    terms = reviewed.job.terms
    p = out.print
    p(f"[bold]job {terms.job_id}[/] ({reviewed.job.state})")
    p(f"  terms digest: {reviewed.job.terms_digest}", highlight=False)
    p(f"  proposer: {terms.proposer[:16]}…", highlight=False)
    p(
        f"  trains: {terms.join} join, {terms.objective}, label {terms.label!r}, "
        f"{terms.num_rounds} rounds, seed {terms.seed}",
        highlight=False,
    )
    p(f"  parameters: {json.dumps(terms.params, sort_keys=True)}", highlight=False, markup=False)
    expires = datetime.fromtimestamp(terms.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    limit = f", at most {terms.max_seconds} s" if terms.max_seconds else ""
    p(
        f"  enclave: {', '.join(terms.allowed_mrenclaves)}; expires {expires}{limit}",
        highlight=False,
    )
    p("  data sets:")
    for d in reviewed.datasets:
        who = "you" if d.yours else (d.owner_name or "unregistered owner")
        p(f"    {d.dataset_id}: {d.rows} rows, owner {who} ({d.owner_key[:16]}…)", highlight=False)
    to = "the data owners" if terms.release_to == "owners" else "the named recipients"
    p(f"  releases {', '.join(terms.outputs) or 'nothing'} to {to}:")
    for r in reviewed.recipients:
        role = "you" if r.you else ("data owner" if r.owner else "not a data owner")
        pin = {"pinned": "matches your pin", "new": "first seen: will be pinned"}.get(r.pin, r.pin)
        p(
            f"    {r.name} ({role}), fingerprint {show_fingerprint(r.fingerprint)} — {pin}",
            highlight=False,
        )
    for warning in reviewed.warnings:
        p(f"  [bold yellow]warning:[/] {warning}", highlight=False)
    for refusal in reviewed.refusals:
        err.print(f"  [bold red]refused:[/] {refusal}", highlight=False, soft_wrap=True)


@app.command()
@_errors
def approve(
    job_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="Approve without asking")] = False,
    accept_warnings: Annotated[
        bool,
        typer.Option(
            "--accept-warnings",
            help="With --yes: approve even if the review warns (for example, you receive nothing)",
        ),
    ] = False,
    policy: PolicyOption = None,
    json_out: JsonOption = False,
) -> None:
    """Show a job's terms, check them, and sign your approval of exactly what was shown.

    The terms are fetched once; the approval signs the digest of that very
    envelope. Refused without asking: your data set named with another
    manifest, an enclave your policy does not allow, a recipient that uses
    your name or key with other keys, a recipient whose keys differ from the
    ones you pinned for its name (see `detente party parties`), an owner left
    out of terms that release to the owners.
    """
    from party_client import party

    home = _home()
    checked = home.policy(policy)
    reviewed = party.review(home, checked, party.fetch_job(home, job_id))
    if json_out:
        print(json.dumps(reviewed.to_dict(), sort_keys=True))
    else:
        _print_review(reviewed)
    if reviewed.refusals:
        raise typer.Exit(1)
    accepted = accept_warnings
    if not yes:
        question = "Approve these exact terms?"
        if reviewed.warnings:
            question = f"Approve these exact terms, although {len(reviewed.warnings)} warning(s)?"
        if not typer.confirm(question):
            raise typer.Exit(1)
        accepted = True
    job = party.sign_approval(home, reviewed, accept_warnings=accepted)
    if not json_out:
        out.print(
            f"approved {job_id} ({len(job.approvers)}/{len(job.required_approvers)} approvals, "
            f"{job.state})"
        )


@app.command()
@_errors
def status(job_id: str, json_out: JsonOption = False) -> None:
    """Show a job's state and events."""
    from party_client import party

    job = party.wait(_home(), job_id, 0)
    info = {
        "job_id": job.job_id,
        "state": job.state,
        "error": job.error,
        "attempts": job.attempts,
        "approvals": len(job.approvers),
        "required": len(job.required_approvers),
        "events": [{"at": e.at, "kind": e.kind, "text": e.text} for e in job.events],
    }
    if json_out:
        print(json.dumps(info, sort_keys=True))
    else:
        out.print(f"{job.job_id}: {job.state} ({info['approvals']}/{info['required']} approvals)")
        for event in job.events:
            out.print(f"  {event.kind}: {event.text}", highlight=False, markup=False)
        # The error is also an event; print it apart only if the events lack it.
        if job.error and not any(e.kind == "error" and e.text == job.error for e in job.events):
            out.print(f"  error: {job.error}", highlight=False, markup=False)
        if job.state == "failed" and job.terms.proposer == _home().signing_key().verify_key.hex:
            out.print(f"  retry it with `detente party retry {job_id}`")


@app.command()
@_errors
def jobs(json_out: JsonOption = False) -> None:
    """List the jobs you take part in (as proposer, data owner or recipient)."""
    from party_client import party

    home = _home()
    me = home.signing_key().verify_key.hex
    items: list[dict[str, Any]] = []
    for job in party.jobs(home):
        roles = []
        if job.terms.proposer == me:
            roles.append("proposer")
        if me in job.required_approvers:
            roles.append("owner")
        if any(r.signing_key.hex == me for r in job.terms.recipients):
            roles.append("recipient")
        items.append(
            {
                "job_id": job.job_id,
                "state": job.state,
                "roles": roles,
                "approvals": len(job.approvers),
                "required": len(job.required_approvers),
                "you_approved": me in job.approvers,
            }
        )
    if json_out:
        print(json.dumps(items, sort_keys=True))
        return
    if not items:
        out.print("no jobs yet: propose one with `detente party propose`")
    for item in items:
        todo = (
            "  (awaits your approval)"
            if "owner" in item["roles"] and not item["you_approved"] and item["state"] == "proposed"
            else ""
        )
        out.print(
            f"{item['job_id']}  {item['state']}  {item['approvals']}/{item['required']} approvals"
            f"  you: {', '.join(item['roles'])}{todo}",
            highlight=False,
        )


@app.command()
@_errors
def cancel(
    job_id: str,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the job's events)")] = "",
) -> None:
    """Cancel a job you proposed that has not finished (stops it if it runs)."""
    from party_client import party

    job = party.cancel(_home(), job_id, reason)
    if job.state == "running":
        out.print(f"cancel requested for {job_id}: the coordinator stops it within a second")
    else:
        out.print(f"{job_id} {job.state}")


@app.command()
@_errors
def retry(job_id: str) -> None:
    """Run a failed job you proposed again: same terms and approvals, resumed from its
    last checkpoint."""
    from party_client import party

    job = party.retry(_home(), job_id)
    out.print(
        f"{job_id} is {job.state} again (attempt {job.attempts + 1}); follow it with "
        f"`detente party status {job_id}`"
    )


@app.command("parties")
@_errors
def list_parties(json_out: JsonOption = False) -> None:
    """List the registered parties with their fingerprints and whether they match your pins.

    A name seen for the first time is pinned (trust on first use). Compare
    fingerprints with the parties themselves over a channel you trust; pin
    one learned that way with `detente party pin NAME FINGERPRINT`.
    """
    from party_client import party
    from party_client.pins import show_fingerprint

    seen = party.parties(_home())
    if json_out:
        print(json.dumps([p.__dict__ for p in seen], sort_keys=True))
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
        raise typer.Exit(1)


@app.command("pin")
@_errors
def pin_party(
    name: Annotated[str, typer.Argument(help="The party's name")],
    fingerprint: Annotated[
        str, typer.Argument(help="Its fingerprint, learned from the party out of band")
    ],
) -> None:
    """Pin a party's fingerprint learned out of band (replaces what was first seen)."""
    from party_client import party
    from party_client.pins import show_fingerprint

    pinned = party.pin(_home(), name, fingerprint)
    out.print(f"pinned {name}: {show_fingerprint(pinned)}", highlight=False)


@app.command()
@_errors
def results(
    job_id: str,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the decrypted outputs")] = Path(
        "."
    ),
    wait: Annotated[float, typer.Option(help="Seconds to wait for the job to finish")] = 0,
    json_out: JsonOption = False,
) -> None:
    """Verify the enclave's result statement and decrypt your outputs."""
    from party_client import party

    written = party.results(_home(), job_id, out_dir, wait)
    if json_out:
        print(json.dumps({k: str(v) for k, v in written.items()}, sort_keys=True))
    else:
        for name, path in written.items():
            out.print(f"{name}: {path}")


@app.command()
@_errors
def datasets(json_out: JsonOption = False) -> None:
    """List your data sets and those of jobs you take part in (ids, owners, sizes)."""
    from party_client.remote import Coordinator

    with Coordinator.for_home(_home()) as remote:
        items: list[dict[str, Any]] = [
            {"dataset_id": d.dataset_id, "owner_key": d.owner_key, "size": d.size}
            for d in remote.datasets()
        ]
    if json_out:
        print(json.dumps(items, sort_keys=True))
    else:
        for item in items:
            out.print(
                f"{item['dataset_id']}  owner {item['owner_key'][:16]}…  {item['size']} bytes"
            )
