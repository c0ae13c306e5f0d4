"""`detente party show` and `reject`: a job's terms in plain words, and a data owner's refusal."""

from __future__ import annotations

from typing import Annotated, Any

import typer

import party_client as party
from party_client.cli.consent import print_review
from party_client.cli.options import PolicyOption
from protocols.cli_convention import JsonOption, emit_json, out


def _approvals(reviewed: party.Review) -> list[dict[str, Any]]:
    """Each data owner whose approval the job needs: its name, key and whether it approved."""
    names = {d.owner_key: d.owner_name for d in reviewed.datasets}
    job = reviewed.job
    return [
        {"key": key, "name": names.get(key, ""), "approved": key in job.approvers}
        for key in job.required_approvers
    ]


def _rejection(job: party.JobView, names: dict[str, str]) -> dict[str, Any] | None:
    if job.rejection is None:
        return None
    by = job.rejection.by
    return {"by": by, "name": names.get(by, ""), "reason": job.rejection.reason}


def show(
    job_id: Annotated[str, typer.Argument(help="The job (see `detente party jobs`)")],
    policy: PolicyOption = None,
    json_out: JsonOption = False,
) -> None:
    """Show a job's terms in plain words, its approvals given and missing, and its state.

    The data sets and their owners, the join, objective and parameters, the
    enclave measurement the terms allow, who receives what (or who may query a
    sealed model, and how much), then each data owner's approval and, if a data
    owner rejected the job, who did and why. Nothing is signed: approve with
    `detente party approve`, refuse with `detente party reject`.
    """
    home = party.PartyHome.default()
    reviewed = party.review(home, home.policy(policy), party.fetch_job(home, job_id))
    approvals = _approvals(reviewed)
    names = {a["key"]: a["name"] for a in approvals}
    rejection = _rejection(reviewed.job, names)
    if json_out:
        emit_json({**reviewed.to_dict(), "approvals": approvals, "rejection": rejection})
        return
    print_review(reviewed, refused="you could not approve")
    given = sum(a["approved"] for a in approvals)
    out.print(f"  approvals: {given} of {len(approvals)}", highlight=False)
    for a in approvals:
        mark = "approved" if a["approved"] else "not yet"
        out.print(f"    {a['name'] or a['key'][:16] + '…'}: {mark}", highlight=False, markup=False)
    if rejection is not None:
        # The reason is another party's text: printed as it is, never read as markup.
        who = rejection["name"] or rejection["by"][:16] + "…"
        out.print(f"  rejected by {who}: {rejection['reason']}", highlight=False, markup=False)
    _next_step(reviewed, home)


def _next_step(reviewed: party.Review, home: party.PartyHome) -> None:
    job = reviewed.job
    me = home.signing_key().verify_key.hex
    if job.state == "proposed" and me in job.required_approvers and me not in job.approvers:
        out.print(
            f"next: `detente party approve {job.job_id}`, or `detente party reject "
            f"{job.job_id} --reason TEXT`"
        )
    elif job.state in ("approved", "running"):
        out.print(f"next: follow it with `detente party status {job.job_id} --follow`")
    elif job.state == "succeeded":
        out.print(f"next: `detente party results {job.job_id} --out DIR`")


def reject(
    job_id: Annotated[str, typer.Argument(help="The job to refuse")],
    reason: Annotated[
        str,
        typer.Option(
            "--reason",
            help="Why, in one line (at most 500 characters): signed, and shown to every "
            "party of the job",
        ),
    ],
    json_out: JsonOption = False,
) -> None:
    """Refuse a proposed job as one of its data owners: signed, with your reason; for good.

    The job is rejected at once and never runs: no approval, retry or
    cancel changes that. Its proposer and the other parties see your reason
    in `detente party status` and `detente party show`. Only a data owner of
    the job rejects it; a proposer withdraws its own job with `detente party
    cancel`.
    """
    job = party.reject(party.PartyHome.default(), job_id, reason)
    if json_out:
        emit_json(
            {
                "job_id": job.job_id,
                "state": job.state,
                "rejected_by": job.rejection.by if job.rejection else None,
                "reason": job.rejection.reason if job.rejection else None,
            }
        )
        return
    out.print(
        f"rejected {job.job_id}: it will never run; its parties see your reason", highlight=False
    )
