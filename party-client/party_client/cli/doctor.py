"""`detente party doctor`: what stands between this party and a job, and what to fix."""

from __future__ import annotations

import typer

import party_client as party
from party_client.cli.options import PolicyOption
from protocols.cli_convention import EXIT_ERROR, JsonOption, emit_json, out


def doctor(policy: PolicyOption = None, json_out: JsonOption = False) -> None:
    """Check this party's setup: config, keys, coordinator, certificate, clock, enclave, audit.

    Each check prints ok, FAIL with what to fix, or skipped (when a check it
    needs failed). The config and its files' permissions; the keys (present,
    mode 0600, opened with the passphrase if encrypted); the policy; the
    coordinator (reachable, presenting the certificate you pinned, your
    registration); your clock against the coordinator's; the enclave attested
    afresh under your policy (the failing rule named); the coordinator's audit
    log extending what you verified. Exits 1 if any check fails.
    """
    found = party.diagnose(party.PartyHome.default(), policy)
    if json_out:
        emit_json(found.to_dict())
    else:
        marks = {"ok": "[green]ok[/]  ", "fail": "[bold red]FAIL[/]", "skipped": "[dim]skip[/]"}
        for check in found.checks:
            out.print(f"{marks[check.status]} {check.name}: ", end="", highlight=False)
            out.print(check.detail, highlight=False, markup=False)
            if check.fix:
                out.print(f"       fix: {check.fix}", highlight=False, markup=False)
        if found.ok:
            out.print("all checks passed")
    if not found.ok:
        raise typer.Exit(EXIT_ERROR)
