"""The `detente` command: wires each component's command group, and the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coordinator.cli import app as coordinator_app
from libos.cli import app as libos_app
from party_client.attest_cli import app as attest_app
from party_client.cli import app as party_app
from protocols.cli_convention import command_group

app = command_group("Detente: train XGBoost across parties inside an attested enclave.")
app.add_typer(party_app, name="party")
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(libos_app, name="libos")
app.add_typer(attest_app, name="attest")


@app.command("demo")
def demo(
    data: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="CSV file (default: the bundled UCI credit data)"
        ),
    ] = None,
    label: Annotated[str | None, typer.Option(help="Label column (0/1)")] = None,
    id_column: Annotated[
        str | None, typer.Option("--id", help="Identifier column, not a feature")
    ] = None,
    split_by: Annotated[
        str | None, typer.Option(help="Column whose values decide each row's party")
    ] = None,
    parties: Annotated[int, typer.Option(min=2, max=16, help="Number of parties")] = 3,
    workdir: Annotated[Path | None, typer.Option(help="Keep every role's files here")] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Boosting rounds")] = 200,
) -> None:
    """Run the whole three-party flow with real processes (SIMULATION enclave)."""
    from detente import demo as run_demo  # numpy, pyarrow and xgboost load only for the demo

    code = run_demo.main(data, label, id_column, split_by, parties, workdir, rounds)
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
