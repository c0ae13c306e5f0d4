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
out = Console()
err = Console(stderr=True)
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
    registration = party.init(home, name, coordinator, pq)
    if policy is not None:
        home.policy(policy)  # validate before copying
        home.policy_path.write_text(policy.read_text())
    out.print(f"party {name!r} registered; signing key {registration.signing_key.hex}")
    out.print(f"HPKE suite: {registration.hpke_key.kem.label}")
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
    policy: PolicyOption = None,
    json_out: JsonOption = False,
) -> None:
    """Validate a table, seal it to the attested enclave and upload it."""
    from party_client import party

    home = _home()
    done = party.upload(
        home, home.policy(policy), path, label, id_column, dataset_id, publish_schema
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
    policy: PolicyOption = None,
    json_out: JsonOption = False,
) -> None:
    """Propose a horizontal XGBoost job over data sets; every owner must approve it."""
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
    )
    if json_out:
        print(json.dumps({"job_id": terms.job_id}))
    else:
        out.print(
            f"proposed {terms.job_id}; next: each owner runs `detente party approve {terms.job_id}`"
        )


@app.command()
@_errors
def approve(
    job_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="Approve without asking")] = False,
    policy: PolicyOption = None,
) -> None:
    """Show a job's terms and sign your approval of them."""
    from party_client import party

    home = _home()
    _, terms, _ = party.fetch_terms(home, job_id)
    out.print_json(data=party.describe_terms(terms))
    if not yes and not typer.confirm("Approve these exact terms?"):
        raise typer.Exit(1)
    party.approve(home, home.policy(policy), job_id)
    out.print(f"approved {job_id}")


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
        "approvals": len(job.approvals),
        "required": len(job.required_approvers),
        "events": [{"at": e.at, "kind": e.kind, "text": e.text} for e in job.events],
    }
    if json_out:
        print(json.dumps(info, sort_keys=True))
    else:
        out.print(f"{job.job_id}: {job.state} ({info['approvals']}/{info['required']} approvals)")
        for event in job.events:
            out.print(f"  {event.kind}: {event.text}", highlight=False)
        if job.error:
            out.print(f"  error: {job.error}")


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
    """List the data sets the coordinator holds (ids, owners, sizes: no contents)."""
    from party_client.remote import Coordinator

    with Coordinator.for_home(_home()) as remote:
        items = [
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
