"""`detente party predict`, `models` and `retire`: sealed models, queried and never released."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

import party_client as party
from party_client.cli.options import PolicyOption
from protocols.cli_convention import EXIT_ERROR, JsonOption, emit_json, err, out, warn_simulation

if TYPE_CHECKING:
    from party_client.models import ModelView


def predict(
    model_id: Annotated[str, typer.Argument(help="The sealed model (the id of its job)")],
    path: Annotated[Path, typer.Argument(help="CSV or Parquet file of the rows to score")],
    out_path: Annotated[
        Path,
        typer.Option(
            "--out", help="File for the predictions: .csv or .parquet (written with mode 0600)"
        ),
    ],
    id_column: Annotated[
        str | None,
        typer.Option(
            "--id",
            help="Identifier column: kept on this machine and written next to the predictions",
        ),
    ] = None,
    schema: Annotated[
        Path | None,
        typer.Option(
            "--schema",
            help="TOML or JSON file mapping column names to numeric or categorical "
            "(as for an upload)",
        ),
    ] = None,
    policy: PolicyOption = None,
    json_out: JsonOption = False,
) -> None:
    """Score rows with a sealed model (rows sealed to the enclave, answers encrypted to you).

    The file holds the model's feature columns (any order, no label); text
    columns are categories, the others numbers, as for an upload. The
    enclave refuses missing, extra or mistyped columns by name, and rows
    beyond your budget; each answered row counts against it.
    """
    from party_client.cli.progress import UploadReport, describe_query
    from party_client.tables import load_schema

    kinds = load_schema(schema) if schema is not None else None
    home = party.PartyHome.default()
    report = None if json_out else UploadReport(err, describe_query)
    try:
        done = party.predict(
            home,
            model_id,
            path,
            out_path,
            id_column,
            report,
            policy=home.policy(policy),
            column_kinds=kinds,
        )
    finally:
        if report is not None:
            report.close()
    if json_out:
        emit_json(done.to_dict())
    else:
        ids = f" next to the ids of {id_column!r}" if id_column else ""
        out.print(
            f"wrote {done.rows:,} predictions ({', '.join(done.columns)}){ids} to {done.out}",
            highlight=False,
            markup=False,
        )
        out.print(f"budget left: {done.remaining.describe()}", highlight=False)
    if done.simulation:
        warn_simulation()


def _when(ms: int) -> str:
    """A coordinator timestamp (milliseconds since the epoch) for reading."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _answers(view: ModelView) -> str:
    if view.answer is None:
        return "answers: not shown (you take no part in the job's terms)"
    if view.answer == "class":
        return "answers: the class only"
    rounded = f", rounded to {view.digits} decimals" if view.digits is not None else ""
    return f"answers: the model's output{rounded}"


def _print_model(view: ModelView) -> None:
    p = out.print
    since = f", retired {_when(view.retired_at)}" if view.retired else ""
    p(f"[bold]{view.model_id}[/] {view.state}{since}", highlight=False)
    p(f"  sealed by job {view.job_id} on {_when(view.created_at)}; {_answers(view)}", markup=False)
    for q in view.queriers:
        per_day = f", {q.rows_per_day:,} a day" if q.rows_per_day is not None else ""
        you = " (you)" if q.you else ""
        p(
            f"  querier {q.name}{you}: {q.total_rows:,} rows in all{per_day}; "
            f"{q.queries} queries, {q.rows:,} rows relayed",
            highlight=False,
            markup=False,
        )
    signed = [o for o in view.owners if o.retired]
    if signed or view.retired:
        names = ", ".join(o.name or o.signing_key[:16] + "…" for o in signed) or "nobody"
        p(f"  retirement signed by: {names}", highlight=False, markup=False)


def models(json_out: JsonOption = False) -> None:
    """List the sealed models you own or may query, with their budgets and state."""
    found = party.models(party.PartyHome.default())
    if json_out:
        emit_json([m.to_dict() for m in found])
        return
    if not found:
        out.print(
            "no sealed models yet: a job proposed with `detente party propose --sealed` makes one"
        )
    for view in found:
        _print_model(view)


def retire(
    model_id: Annotated[str, typer.Argument(help="The sealed model (the id of its job)")],
    yes: Annotated[bool, typer.Option("--yes", help="Sign without asking")] = False,
    json_out: JsonOption = False,
) -> None:
    """Sign your retirement of a sealed model (with every owner's, the enclave destroys it).

    With every data owner's retirement the enclave destroys the model and its
    key, and it answers no more queries. Only the job's data owners retire
    its model. Nothing can undo it.
    """
    home = party.PartyHome.default()
    view = party.model(home, model_id)
    if not json_out:
        _print_model(view)
        awaiting = ", ".join(o.name or o.signing_key[:16] + "…" for o in view.awaiting)
        err.print(
            f"retiring destroys model {model_id!r} and its key in the enclave once every data "
            f"owner has signed (still to sign: {awaiting or 'nobody'}); nobody can query it "
            "afterwards, and nothing can undo it",
            highlight=False,
            markup=False,
        )
    # The library refuses a retired model without signing anything: no question then.
    asks = not yes and not view.retired
    if asks and not typer.confirm(f"Sign the retirement of model {model_id}?", err=True):
        raise typer.Exit(EXIT_ERROR)
    after = party.retire(home, model_id)
    if json_out:
        emit_json(after.to_dict())
        return
    if after.retired:
        out.print(f"model {model_id} is retired: the enclave destroyed it and its key")
    else:
        awaiting = ", ".join(o.name or o.signing_key[:16] + "…" for o in after.awaiting)
        out.print(
            f"signed; model {model_id} is retired once {awaiting} sign too "
            f"(`detente party retire {model_id}`)",
            highlight=False,
            markup=False,
        )
