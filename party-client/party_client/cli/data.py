"""`detente party attest`, `upload`, `datasets` and `withdraw`: the enclave to seal to, and
the data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

import party_client as party
from party_client.cli.options import PolicyOption
from protocols.cli_convention import (
    EXIT_ERROR,
    JsonOption,
    emit_json,
    err,
    out,
    print_verdict,
    warn_simulation,
)


def attest(
    policy: PolicyOption = None, explain: bool = False, json_out: JsonOption = False
) -> None:
    """Verify the enclave's evidence against your policy and keep the record."""
    home = party.PartyHome.default()
    enclave = party.attest(home, home.policy(policy))
    if json_out:
        emit_json(party.enclave_summary(enclave))
    else:
        out.print(f"enclave attested: MRENCLAVE {enclave.mrenclave}")
        if explain:
            print_verdict(enclave.verdict, out)
    if enclave.simulation:
        warn_simulation()


def upload(
    path: Annotated[Path, typer.Argument(help="CSV or Parquet file")],
    label: Annotated[
        str | None,
        typer.Option(help="Label column (omit it if another party holds the label: vertical jobs)"),
    ] = None,
    id_column: Annotated[
        str | None, typer.Option("--id", help="Identifier column (not a feature)")
    ] = None,
    schema: Annotated[
        Path | None,
        typer.Option(
            "--schema",
            help="TOML or JSON file mapping column names to numeric or categorical "
            "(overrides what the file suggests)",
        ),
    ] = None,
    dataset_id: Annotated[str | None, typer.Option(help="Data set id (default: random)")] = None,
    publish_schema: Annotated[
        bool, typer.Option(help="Show column names to the coordinator")
    ] = False,
    display_name: Annotated[
        str,
        typer.Option(
            "--name", help="A label for the data set that job participants see (default: none)"
        ),
    ] = "",
    resume: Annotated[
        bool,
        typer.Option(
            help="Send the rest of an interrupted upload of FILE (the same sealed copy, from "
            "the last byte the coordinator acknowledged)"
        ),
    ] = False,
    policy: PolicyOption = None,
    json_out: JsonOption = False,
) -> None:
    """Validate a table, seal it to the attested enclave and upload it.

    Text columns (CSV) and dictionary columns (Parquet) are categorical
    features, the others numeric; --schema overrides either. The file's name
    stays on your machine; give the data set a public label with --name if
    you want one.

    An upload cut off while sending (network, coordinator restart, Ctrl-C)
    keeps its sealed copy in your home: run the same command with --resume to
    send the rest. The coordinator lists the data set only once it is whole.
    """
    from party_client.cli.progress import UploadReport
    from party_client.resume import pending_uploads
    from party_client.tables import load_schema

    kinds = load_schema(schema) if schema is not None else None
    home = party.PartyHome.default()
    if not resume:
        source = str(path.resolve())
        for left in pending_uploads(home.spool_dir):
            if left.source == source:
                err.print(
                    f"note: an interrupted upload of {path} (data set {left.dataset_id}) is "
                    "kept in this home; `--resume` would send the rest of it instead of "
                    "sealing the file again",
                    highlight=False,
                )
    report = None if json_out else UploadReport(err)
    try:
        done = party.upload(
            home,
            home.policy(policy),
            path,
            label,
            id_column,
            dataset_id,
            publish_schema,
            display_name=display_name,
            column_kinds=kinds,
            progress=report,
            resume=resume,
        )
    finally:
        if report is not None:
            report.close()
    if json_out:
        emit_json(done.__dict__)
    else:
        categorical = f" ({len(done.categorical)} categorical)" if done.categorical else ""
        without = "" if done.label else ", no label"
        out.print(
            f"uploaded {done.dataset_id}: {done.rows} rows, {done.columns} columns{categorical}"
            f"{without}, {done.ciphertext_size} bytes of ciphertext",
            highlight=False,
        )
    if done.simulation:
        warn_simulation()


def datasets(json_out: JsonOption = False) -> None:
    """List your data sets and those of jobs you take part in (ids, owners, sizes)."""
    items: list[dict[str, Any]] = [
        {
            "dataset_id": d.dataset_id,
            "owner_key": d.owner_key,
            "size": d.size,
            "withdrawn_at": d.withdrawn_at,
        }
        for d in party.list_datasets(party.PartyHome.default())
    ]
    if json_out:
        emit_json(items)
    else:
        for item in items:
            withdrawn = "  withdrawn" if item["withdrawn_at"] else ""
            out.print(
                f"{item['dataset_id']}  owner {item['owner_key'][:16]}…  {item['size']} bytes"
                f"{withdrawn}"
            )


def withdraw(
    dataset_id: Annotated[str, typer.Argument(help="Your data set's id")],
    yes: Annotated[bool, typer.Option("--yes", help="Withdraw without asking")] = False,
    json_out: JsonOption = False,
) -> None:
    """Withdraw your data set for good: its ciphertext is deleted, jobs using it cancelled.

    Every enclave worker refuses the data set from then on and destroys the
    checkpoints and sealed models trained on it. Nothing can undo it: to use
    the data again, upload it as a new data set. Exit code 1 if you do not
    own the data set or the coordinator refuses.
    """
    home = party.PartyHome.default()
    plan = party.withdrawal_plan(home, dataset_id)
    if not yes and not plan.withdrawn_at:
        stops = ", ".join(f"{j.job_id} ({j.state})" for j in plan.jobs) or "none"
        err.print(
            f"withdrawing data set {dataset_id!r} ({plan.rows} rows) deletes its ciphertext at "
            "the coordinator, has every enclave worker refuse it and destroy the checkpoints "
            "and sealed models trained on it, and cancels the jobs that use it: "
            f"{stops}. Nothing can undo it.",
            highlight=False,
            markup=False,
        )
        if not typer.confirm(f"Withdraw data set {dataset_id}?", err=True):
            raise typer.Exit(EXIT_ERROR)
    done = party.withdraw(home, dataset_id)
    if json_out:
        emit_json(done.to_dict())
        return
    cancelled = ", ".join(done.cancelled_jobs) or "none"
    out.print(
        f"data set {dataset_id} withdrawn; jobs cancelled: {cancelled}",
        highlight=False,
        markup=False,
    )
    for worker in done.workers:
        state = (
            "acknowledged: it refuses the data set and destroyed what it derived from it"
            if worker.acknowledged
            else f"not reached yet ({worker.error or 'no attempt yet'}); the coordinator "
            "sends it again until it acknowledges"
        )
        out.print(f"  worker {worker.worker}: {state}", highlight=False, markup=False)
