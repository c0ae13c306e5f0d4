"""`detente party audit`: check the coordinator's audit log against what this party saw."""

from __future__ import annotations

import party_client as party
from protocols.cli_convention import JsonOption, emit_json, out


def audit(json_out: JsonOption = False) -> None:
    """Check that the coordinator's audit log extends the last head you verified.

    Every command already checks the signed head each reply carries; this one
    fetches the entries since the head you verified last and checks every link
    up to the newest, then remembers that head as verified.
    """
    from party_client.audit import audit as check_audit  # loads gRPC: only when run

    report = check_audit(party.PartyHome.default())
    if json_out:
        emit_json(
            {
                "ok": True,
                "from_seq": report.verified_from,
                "to_seq": report.verified_to,
                "entries_checked": report.entries_checked,
                "head_hash": report.head.hash,
            }
        )
        return
    out.print(
        f"ok: the coordinator's audit log extends what you saw: entries "
        f"{report.verified_from}..{report.verified_to} chain to its signed head "
        f"{report.head.hash[:16]}…",
        highlight=False,
    )
