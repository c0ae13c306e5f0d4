"""`detente demo`: the three-party flow on real processes (experiments.demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    data: Annotated[
        Path | None, typer.Option(help="CSV file (default: the bundled UCI credit data)")
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
    from experiments import demo as run_demo

    code = run_demo.main(data, label, id_column, split_by, parties, workdir, rounds)
    raise typer.Exit(code)
