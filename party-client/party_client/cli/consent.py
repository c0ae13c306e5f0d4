"""`detente party approve`: job terms consented to by each data owner, as shown to it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

import party_client as party
from party_client.cli.options import PolicyOption
from party_client.pins import show_fingerprint
from protocols.cli_convention import EXIT_ERROR, JsonOption, emit_json, err, out

if TYPE_CHECKING:
    from protocols.documents import JobTerms


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
    out of terms that release to the owners. A sealed model's queriers are
    checked as recipients are, and listed with their budgets.
    """
    home = party.PartyHome.default()
    checked = home.policy(policy)
    reviewed = party.review(home, checked, party.fetch_job(home, job_id))
    if json_out:
        emit_json(reviewed.to_dict())
    else:
        print_review(reviewed)
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


def _training(terms: JobTerms) -> str:
    """The join, the objective and the rounds, as the review states them."""
    how = (
        "vertical join (the columns of all data sets, on the rows whose ids all of them hold)"
        if terms.join == "vertical"
        else "horizontal join (the rows of all data sets)"
    )
    return (
        f"{how}, objective {terms.objective}, label {terms.label!r}, {terms.num_rounds} rounds, "
        f"seed {terms.seed}"
    )


def _checks(terms: JobTerms) -> str:
    """Validation, early stopping, the metrics stride and the minimum rows."""
    parts = []
    if terms.validation_fraction > 0:
        parts.append(f"{terms.validation_fraction:.0%} of the rows held out for validation")
    else:
        parts.append("no validation rows")
    if terms.early_stopping_rounds:
        parts.append(f"early stopping after {terms.early_stopping_rounds} rounds without gain")
    every = f"every {terms.metrics_every} rounds" if terms.metrics_every else "at the end"
    parts.append(f"metrics {every}")
    parts.append(f"refuses fewer than {terms.min_rows} rows")
    return "; ".join(parts)


def _live_metrics(terms: JobTerms) -> str:
    """Whether the coordinator sees the metrics while the job trains, in plain words."""
    if not terms.live_metrics:
        return "none: the coordinator sees the rounds done, never a metric"
    names = terms.params.get("eval_metric", "the objective's default metric")
    names = ", ".join(map(str, names)) if isinstance(names, list) else str(names)
    rows = "validation rows" if terms.validation_fraction > 0 else "training rows"
    return (
        f"the enclave reports {names} on the {rows} every {terms.metrics_every} rounds to the "
        "coordinator IN THE CLEAR, rounded to 4 significant digits: its operator, its "
        "dashboard and its database see them while the job trains"
    )


def _answer(terms: JobTerms) -> str:
    """What an answer to a query of the sealed model holds."""
    if terms.answer == "class":
        return "the class only"
    what = "probabilities" if terms.objective.startswith(("binary:", "multi:")) else "values"
    if terms.answer_digits is None:
        return f"the model's {what}, unrounded"
    return f"the model's {what}, rounded to {terms.answer_digits} decimals"


def _print_model(reviewed: party.Review) -> None:
    """A sealed model, stated plainly: nobody receives it; who queries it, how much, and what."""
    terms = reviewed.job.terms
    p = out.print
    if not terms.sealed:
        return
    p(
        f"  model: [bold]SEALED[/] in the enclave as {terms.job_id!r}: nobody receives it, "
        "not even you; the parties below may query it, and every data owner must sign to "
        "retire it",
        highlight=False,
    )
    p(f"  each answer holds: {_answer(terms)}", highlight=False, markup=False)
    p("  may query it:")
    for q in reviewed.queriers:
        role = "you" if q.you else ("data owner" if q.owner else "not a data owner")
        daily = f", at most {q.rows_per_day:,} a day" if q.rows_per_day is not None else ""
        pin = {"pinned": "matches your pin", "new": "first seen: will be pinned"}.get(q.pin, q.pin)
        p(
            f"    {q.name} ({role}): {q.total_rows:,} rows in all{daily}; fingerprint "
            f"{show_fingerprint(q.fingerprint)} — {pin}",
            highlight=False,
            markup=False,
        )


def print_review(reviewed: party.Review, refused: str = "refused") -> None:
    """What approving means, as the party reads it before it signs."""
    terms = reviewed.job.terms
    p = out.print
    p(f"[bold]job {terms.job_id}[/] ({reviewed.job.state})")
    p(f"  terms digest: {reviewed.job.terms_digest}", highlight=False)
    p(f"  proposer: {terms.proposer[:16]}…", highlight=False)
    p(f"  trains: {_training(terms)}", highlight=False, markup=False)
    p(f"  checks: {_checks(terms)}", highlight=False, markup=False)
    p(f"  live metrics: {_live_metrics(terms)}", highlight=False, markup=False)
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
        ids = terms.id_column_of(d.dataset_id)
        keyed = f", ids in {ids!r}" if ids else ""
        p(
            f"    {d.dataset_id}: {d.rows} rows{keyed}, owner {who} ({d.owner_key[:16]}…)",
            highlight=False,
            markup=False,
        )
    _print_model(reviewed)
    to = "the data owners" if terms.release_to == "owners" else "the named recipients"
    p(f"  releases {', '.join(terms.outputs) or 'nothing'} to {to}:")
    for r in reviewed.recipients:
        role = "you" if r.you else ("data owner" if r.owner else "not a data owner")
        pin = {"pinned": "matches your pin", "new": "first seen: will be pinned"}.get(r.pin, r.pin)
        p(
            f"    {r.name} ({role}), fingerprint {show_fingerprint(r.fingerprint)} — {pin}",
            highlight=False,
        )
    for output, names in reviewed.releases().items():
        what = f"model ({terms.model_format})" if output == "model" else output
        if output.startswith("predictions."):
            what += " (its owner's rows)"
        p(f"    {what} → {', '.join(names) or 'nobody'}", highlight=False, markup=False)
    for warning in reviewed.warnings:
        p(f"  [bold yellow]warning:[/] {warning}", highlight=False)
    for refusal in reviewed.refusals:
        err.print(f"  [bold red]{refused}:[/] {refusal}", highlight=False)
