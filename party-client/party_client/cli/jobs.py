"""`detente party status`, `jobs`, `cancel`, `retry` and `results`: following jobs to their end."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

import party_client as party
from protocols.cli_convention import EXIT_ERROR, JsonOption, emit_json, err, out


def status(
    job_id: str,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="Print the state, rounds and other events as they arrive, until the job ends "
            "(exit 0 if it succeeded, 1 otherwise; Ctrl-C stops following, the job goes on)",
        ),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Show a job's state and events (with --follow: live, until it ends).

    With --json, one JSON document; with --follow --json, one JSON document
    per line: one per event as it arrives, then the job as it ended.
    """
    home = party.PartyHome.default()
    if follow:
        _follow(home, job_id, json_out)
        return
    job = party.wait(home, job_id, 0)
    info = _status(home, job)
    if json_out:
        emit_json(info)
        return
    out.print(f"{job.job_id}: {job.state} ({info['approvals']}/{info['required']} approvals)")
    model = info["model"]
    if isinstance(model, dict):
        state = model["state"] or "not sealed yet"
        out.print(f"  sealed model {job.job_id}: {state}", highlight=False, markup=False)
    for m in info["live_metrics"]:
        out.print(
            f"  latest {m['data']} {m['metric']}: {m['value']:.4g} (round {m['round']}/"
            f"{m['rounds']}, reported live by the enclave)",
            highlight=False,
            markup=False,
        )
    for event in job.events:
        out.print(f"  {event.kind}: {event.text}", highlight=False, markup=False)
    _ending(home, job)


def _status(home: party.PartyHome, job: party.JobView) -> dict[str, Any]:
    rejection = job.rejection
    return {
        "job_id": job.job_id,
        "state": job.state,
        "error": job.error,
        "attempts": job.attempts,
        "approvals": len(job.approvers),
        "required": len(job.required_approvers),
        "events": [{"at": e.at, "kind": e.kind, "text": e.text} for e in job.events],
        "model": _model(home, job),
        "live_metrics": _live_metrics(job),
        "rejection": None
        if rejection is None
        else {"by": rejection.by, "reason": rejection.reason},
    }


def _ending(home: party.PartyHome, job: party.JobView) -> None:
    """What the job's end says beyond its events: the error, the rejection, the next step."""
    # The error is also an event; print it apart only if the events lack it.
    if job.error and not any(e.kind == "error" and e.text == job.error for e in job.events):
        out.print(f"  error: {job.error}", highlight=False, markup=False)
    if job.rejection is not None:
        with party.Party(home) as me:
            by = me.names().get(job.rejection.by) or job.rejection.by[:16] + "…"
        # Another party's text: printed as it is, never read as markup.
        out.print(
            f"  rejected by {by} (a data owner): {job.rejection.reason}",
            highlight=False,
            markup=False,
        )
    elif job.state == "rejected":
        out.print("  rejected, but the coordinator shows no signed rejection", highlight=False)
    if job.state == "failed" and job.terms.proposer == home.signing_key().verify_key.hex:
        out.print(f"  retry it with `detente party retry {job.job_id}`")


def _follow(home: party.PartyHome, job_id: str, json_out: bool) -> None:
    """`status --follow`: each event on its own line (a JSON line with --json) as it arrives;
    on a terminal, a status line under them says the job's state and last event."""
    from contextlib import nullcontext

    from rich.markup import escape

    last: party.JobView | None = None
    updates = party.follow(home, job_id)
    live = out.status(f"following {escape(job_id)}…") if out.is_terminal and not json_out else None
    try:
        with live if live is not None else nullcontext():
            for update in updates:
                last = update.job
                if update.event is None:
                    break
                e = update.event
                if json_out:
                    emit_json(
                        {
                            "job_id": job_id,
                            "state": last.state,
                            "at": e.at,
                            "kind": e.kind,
                            "text": e.text,
                        }
                    )
                    continue
                at = datetime.fromtimestamp(e.at / 1000, UTC).strftime("%H:%M:%S")
                out.print(f"{at} {e.kind}: {e.text}", highlight=False, markup=False)
                if live is not None:
                    live.update(f"{escape(job_id)} {last.state}: {escape(e.text)}")
    except KeyboardInterrupt:
        updates.close()
        state = f" (it was {last.state})" if last is not None else ""
        err.print(
            f"stopped following {job_id}{state}; the job goes on: "
            f"`detente party status {job_id} --follow` follows it again",
            highlight=False,
            markup=False,
        )
        raise typer.Exit(EXIT_ERROR) from None
    assert last is not None
    if json_out:
        emit_json({**_status(home, last), "end": True})
    else:
        out.print(f"{job_id} {last.state}", highlight=False)
        _ending(home, last)
    if last.state != "succeeded":
        raise typer.Exit(EXIT_ERROR)


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
