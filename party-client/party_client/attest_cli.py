"""`detente attest …`: inspect and verify attestation evidence. Each verb is small and calls
protocols.attestation.

``inspect`` reads a raw quote (SGX v3, TDX v4/v5, simulated or real), prints its
fields, verifies it (chain to the pinned Intel SGX Root CA, QE report binding,
report signatures) and, with ``--collateral``, its TCB info, QE identity and
CRLs at ``--at`` (default: now). Exit status: 0 when the quote (and the
collateral, when given) verify, whatever the TCB status; 1 when anything fails;
with ``--policy``, also 1 when the policy refuses the quote; 2 for a bad argument
(the codes of :mod:`protocols.cli_convention`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from protocols.attestation import QuoteAssessment, Rule, assess_quote
from protocols.cli_convention import (
    JsonOption,
    command_group,
    emit_json,
    out,
    print_verdict,
    warn_simulation,
)
from protocols.collateral import Collateral
from protocols.errors import SetupError
from protocols.policy import AttestationPolicy
from protocols.quote_verify import describe_quote

app = command_group("Inspect and verify attestation evidence: quotes and their collateral.")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SetupError(f"cannot read {what} {path}: {exc.strerror}") from None


@app.command()
def inspect(
    file: Annotated[Path, typer.Argument(help="Raw quote (binary), e.g. from /dev/attestation")],
    collateral: Annotated[
        Path | None,
        typer.Option(
            "--collateral",
            help="Collateral JSON (dcap-qvl QuoteCollateralV3 form: TCB info, QE identity, CRLs)",
        ),
    ] = None,
    at: Annotated[
        int | None,
        typer.Option("--at", help="Verify at this time, in Unix seconds (default: now)"),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="Attestation policy TOML: also judge the quote by it"),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Print a quote's fields, TCB status and advisories, and the verdict."""
    if at is not None and at < 0:
        raise typer.BadParameter(f"{at}: Unix seconds cannot be negative", param_hint="'--at'")
    data = _read(file, "quote")
    loaded = Collateral.from_json(_read(collateral, "collateral")) if collateral else None
    rules = AttestationPolicy.load(policy) if policy else None
    now = datetime.fromtimestamp(at, UTC) if at is not None else datetime.now(UTC)
    result = assess_quote(data, rules, collateral=loaded, now=now)
    report = _report(file, data, result, loaded, rules is not None, now)
    if json_out:
        emit_json(report)
    else:
        _print_human(report)
    if result.simulation:
        warn_simulation()
    if not result.passed:
        raise typer.Exit(1)


def _report(
    file: Path,
    data: bytes,
    result: QuoteAssessment,
    collateral: Collateral | None,
    with_policy: bool,
    now: datetime,
) -> dict[str, Any]:
    """Everything ``inspect`` says, as one JSON-ready document (the --json output)."""
    window = collateral.validity() if collateral else None
    return {
        "file": str(file),
        "size": len(data),
        "at": int(now.timestamp()),
        "quote": describe_quote(result.quote) if result.quote is not None else None,
        "simulation": result.simulation,
        "verified": result.verified is not None,
        "tcb": (
            {"status": result.tcb.status, "advisory_ids": list(result.tcb.advisory_ids)}
            if result.tcb
            else None
        ),
        "collateral": (
            {
                "not_before": window.not_before,
                "not_after": window.not_after,
                "tcb_info": collateral.tcb_info_summary(),
                "qe_identity": collateral.qe_identity_summary(),
            }
            if collateral and window
            else None
        ),
        "policy": with_policy,
        "verdict": [
            {"rule": r.name, "passed": r.passed, "detail": r.detail} for r in result.verdict
        ],
        "passed": result.passed,
    }


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_human(report: dict[str, Any]) -> None:
    def line(name: str, value: Any) -> None:
        out.print(f"  {name:<18} {escape(str(value))}", highlight=False, soft_wrap=True)

    out.print(f"{escape(report['file'])}: {report['size']} bytes", highlight=False)
    fields = report["quote"]
    if fields is not None:
        kind = "SIMULATION " if report["simulation"] else ""
        line("quote", f"{kind}{fields['tee']} v{fields['version']}")
        names = (
            ["mrenclave", "mrsigner", "isv_prod_id", "isv_svn", "attributes"]
            if fields["tee"] == "SGX"
            else ["mrtd", "rtmr", "mr_seam", "td_attributes", "xfam", "tee_tcb_svn"]
        )
        for name in names:
            value = fields[name]
            line(name, ", ".join(value) if isinstance(value, list) else value)
        line("debug", "YES (memory readable by the host)" if fields["debug"] else "no")
        line("report_data", fields["report_data"])
        line("fmspc", fields["fmspc"] or "(none: no PCK SGX extension)")
        line("qe_svn / pce_svn", f"{fields['qe_svn']} / {fields['pce_svn']}")
    tcb = report["tcb"]
    if tcb is not None:
        out.print(f"TCB status: [bold]{escape(tcb['status'])}[/]", highlight=False)
        advisories = ", ".join(tcb["advisory_ids"]) or "none"
        out.print(f"  advisories: {escape(advisories)}", highlight=False, soft_wrap=True)
    elif report["collateral"] is not None:
        out.print("TCB status: unknown (the collateral did not verify: see the tcb rule)")
    else:
        out.print("TCB status: unknown (no collateral given: pass --collateral FILE)")
    if report["collateral"] is not None:
        c = report["collateral"]
        out.print(
            f"collateral: {c['tcb_info']['id']} TCB info v{c['tcb_info']['version']} for FMSPC "
            f"{c['tcb_info']['fmspc']}; current from {_iso(c['not_before'])} to "
            f"{_iso(c['not_after'])} ({c['not_before']}…{c['not_after']})",
            highlight=False,
            soft_wrap=True,
        )
    judged = "policy verdict" if report["policy"] else "verification"
    out.print(f"{judged} at {_iso(report['at'])} ({report['at']}):", highlight=False)
    print_verdict([Rule(r["rule"], r["passed"], r["detail"]) for r in report["verdict"]], out)
    out.print(
        "result: " + ("[green]PASS[/]" if report["passed"] else "[red]FAIL[/]"), highlight=False
    )
