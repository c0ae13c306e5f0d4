"""The `detente` command: wires each component's command group, owns no logic."""

from __future__ import annotations

import typer

from coordinator.cli import app as coordinator_app
from experiments.cli import demo
from libos.cli import app as libos_app
from party_client.attest_cli import app as attest_app
from party_client.cli import app as party_app

app = typer.Typer(
    # Tracebacks must never print local variables: they may hold rows or keys.
    pretty_exceptions_show_locals=False,
    help="Detente: train XGBoost across parties inside an attested enclave.",
    no_args_is_help=True,
)
app.add_typer(party_app, name="party")
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(libos_app, name="libos")
app.add_typer(attest_app, name="attest")
app.command("demo")(demo)


if __name__ == "__main__":
    app()
