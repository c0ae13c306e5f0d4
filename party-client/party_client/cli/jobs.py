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
    metrics = _live_metrics(job)
    info = {
        "job_id": job.job_id,
        "state": job.state,
        "error": job.error,
        "attempts": job.attempts,
        "approvals": len(job.approvers),
        "required": len(job.required_approvers),
        "events": [{"at": e.at, "kind": e.kind, "text": e.text} for e in job.events],
        "model": _model(home, job),
        "live_metrics": metrics,
    }
    if json_out:
        emit_json(info)
        return
    out.print(f"{job.job_id}: {job.state} ({info['approvals']}/{info['required']} approvals)")
    model = info["model"]
    if isinstance(model, dict):
        state = model["state"] or "not sealed yet"
        out.print(f"  sealed model {job.job_id}: {state}", highlight=False, markup=False)
    for m in metrics:
        out.print(
            f"  latest {m['data']} {m['metric']}: {m['value']:.4g} (round {m['round']}/"
            f"{m['rounds']}, reported live by the enclave)",
            highlight=False,
            markup=False,
        )
    for event in job.events:
        out.print(f"  {event.kind}: {event.text}", highlight=False, markup=False)
    # The error is also an event; print it apart only if the events lack it.
    if job.error and not any(e.kind == "error" and e.text == job.error for e in job.events):
        out.print(f"  error: {job.error}", highlight=False, markup=False)
    if job.state == "failed" and job.terms.proposer == home.signing_key().verify_key.hex:
        out.print(f"  retry it with `detente party retry {job_id}`")


def _model(home: party.PartyHome, job: party.JobView) -> dict[str, Any] | None:
    """A sealed job's model: its id (the job's) and state (None until the coordinator records
    it); None for a job that releases its model."""
    if not job.terms.sealed:
        return None
    from party_client.models import sealed_model_state

    return {"model_id": job.job_id, "state": sealed_model_state(home, job.job_id)}


def _live_metrics(job: party.JobView) -> list[dict[str, Any]]:
    """The latest value of each metric the enclave reported live (terms with live metrics)."""
    from protocols.live_metrics import latest, points_of

    found = latest(points_of([(e.kind, e.text) for e in job.events]))
    return [p.__dict__ for _, p in sorted(found.items())]


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
    if any(q.signing_key.hex == me for q in job.terms.queriers):
        roles.append("querier")
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
    """Verify the enclave's result statement and decrypt your outputs.

    A sealed model is not among them: it stays in the enclave, and the
    parties its terms name query it with `detente party predict`.
    """
    home = party.PartyHome.default()
    written = party.results(home, job_id, out_dir, wait)
    terms = party.fetch_job(home, job_id).terms
    if json_out:
        shown = {k: str(v) for k, v in written.items()}
        if terms.sealed:  # not an output name: outputs are model, metrics, importance, …
            shown["sealed_model"] = job_id
        emit_json(shown)
        return
    for name, path in written.items():
        out.print(f"{name}: {path}")
    if terms.sealed:
        me = home.signing_key().verify_key
        how = (
            f"query it with `detente party predict {job_id} FILE --out FILE`"
            if terms.querier(me) is not None
            else f"only {', '.join(q.name for q in terms.queriers)} may query it"
        )
        out.print(
            f"model: sealed in the enclave as {job_id!r}, released to nobody; {how}",
            highlight=False,
            markup=False,
        )
