"""`detente party status`, `jobs`, `cancel`, `retry` and `results`: following jobs to their end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

import party_client as party
from protocols.cli_convention import JsonOption, emit_json, out


def status(job_id: str, json_out: JsonOption = False) -> None:
    """Show a job's state and events."""
    home = party.PartyHome.default()
    job = party.wait(home, job_id, 0)
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
        emit_json(info)
        return
    out.print(f"{job.job_id}: {job.state} ({info['approvals']}/{info['required']} approvals)")
    for event in job.events:
        out.print(f"  {event.kind}: {event.text}", highlight=False, markup=False)
    # The error is also an event; print it apart only if the events lack it.
    if job.error and not any(e.kind == "error" and e.text == job.error for e in job.events):
        out.print(f"  error: {job.error}", highlight=False, markup=False)
    if job.state == "failed" and job.terms.proposer == home.signing_key().verify_key.hex:
        out.print(f"  retry it with `detente party retry {job_id}`")


def jobs(json_out: JsonOption = False) -> None:
    """List the jobs you take part in (as proposer, data owner or recipient)."""
    home = party.PartyHome.default()
    me = home.signing_key().verify_key.hex
    items = [_job_item(job, me) for job in party.jobs(home)]
    if json_out:
        emit_json(items)
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


def _job_item(job: party.JobView, me: str) -> dict[str, Any]:
    """One job of `detente party jobs`, with this party's roles in it."""
    roles = []
    if job.terms.proposer == me:
        roles.append("proposer")
    if me in job.required_approvers:
        roles.append("owner")
    if any(r.signing_key.hex == me for r in job.terms.recipients):
        roles.append("recipient")
    return {
        "job_id": job.job_id,
        "state": job.state,
        "roles": roles,
        "approvals": len(job.approvers),
        "required": len(job.required_approvers),
        "you_approved": me in job.approvers,
    }


def cancel(
    job_id: str,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the job's events)")] = "",
) -> None:
    """Cancel a job you proposed that has not finished (stops it if it runs)."""
    job = party.cancel(party.PartyHome.default(), job_id, reason)
    if job.state == "running":
        out.print(f"cancel requested for {job_id}: the coordinator stops it within a second")
    else:
        out.print(f"{job_id} {job.state}")


def retry(job_id: str) -> None:
    """Run a failed job you proposed again: same terms and approvals, resumed from its
    last checkpoint."""
    job = party.retry(party.PartyHome.default(), job_id)
    out.print(
        f"{job_id} is {job.state} again (attempt {job.attempts + 1}); follow it with "
        f"`detente party status {job_id}`"
    )


def results(
    job_id: str,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the decrypted outputs")] = Path(
        "."
    ),
    wait: Annotated[float, typer.Option(help="Seconds to wait for the job to finish")] = 0,
    json_out: JsonOption = False,
) -> None:
    """Verify the enclave's result statement and decrypt your outputs."""
    written = party.results(party.PartyHome.default(), job_id, out_dir, wait)
    if json_out:
        emit_json({k: str(v) for k, v in written.items()})
    else:
        for name, path in written.items():
            out.print(f"{name}: {path}")
