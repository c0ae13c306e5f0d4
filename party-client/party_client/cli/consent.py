"""`detente party propose` and `approve`: job terms written by one party, consented to by each."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

import party_client as party
from party_client.cli.options import PolicyOption
from party_client.pins import show_fingerprint
from protocols.cli_convention import EXIT_ERROR, JsonOption, emit_json, err, out


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
    params = _params(param or [])
    home = party.PartyHome.default()
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
        emit_json({"job_id": terms.job_id})
    else:
        out.print(
            f"proposed {terms.job_id}; next: each owner runs `detente party approve {terms.job_id}`"
        )


def _params(items: list[str]) -> dict[str, Any]:
    """--param KEY=VALUE, each VALUE read as JSON if it is JSON, else as a string."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--param {item!r} must be KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


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
    home = party.PartyHome.default()
    checked = home.policy(policy)
    reviewed = party.review(home, checked, party.fetch_job(home, job_id))
    if json_out:
        emit_json(reviewed.to_dict())
    else:
        _print_review(reviewed)
    if reviewed.refusals:
        raise typer.Exit(EXIT_ERROR)
    accepted = accept_warnings
    if not yes:
        question = "Approve these exact terms?"
        if reviewed.warnings:
            question = f"Approve these exact terms, although {len(reviewed.warnings)} warning(s)?"
        if not typer.confirm(question):
            raise typer.Exit(EXIT_ERROR)
        accepted = True
    job = party.sign_approval(home, reviewed, accept_warnings=accepted)
    if not json_out:
        out.print(
            f"approved {job_id} ({len(job.approvers)}/{len(job.required_approvers)} approvals, "
            f"{job.state})"
        )


def _print_review(reviewed: party.Review) -> None:
    """What approving means, as the party reads it before it signs."""
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
        err.print(f"  [bold red]refused:[/] {refusal}", highlight=False)
