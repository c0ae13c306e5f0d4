"""The `detente` command: wires each component's command group, and the demo.

Each component's group is imported only when it runs (or when a tool walks
the whole tree), so `detente party status` pays neither for the coordinator's
nor the LibOS's nor the attestation commands, and `detente --help` for none.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, MutableMapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from protocols.cli_convention import DetenteGroup, command_group

# Each group: the module whose ``app`` it is, and the help `detente --help` lists for it
# (the first line of the group's own help; a test keeps the two equal).
GROUPS: dict[str, tuple[str, str]] = {
    "party": (
        "party_client.cli",
        "Contribute data, approve jobs and collect results as a party.",
    ),
    "coordinator": (
        "coordinator.cli",
        "The untrusted coordinator: party registry, ciphertext store, job scheduler.",
    ),
    "libos": (
        "libos.cli",
        "Build, measure and run enclave images (backend 'sim' is a SIMULATION: no hardware "
        "protection).",
    ),
    "attest": (
        "party_client.attest_cli",
        "Inspect and verify attestation evidence: quotes and their collateral.",
    ),
}


def load_group(name: str) -> Any:
    """The click group of ``detente NAME``, importing its module now."""
    # As `app.add_typer` would: a group even of one command, without completion options.
    group = typer.main.get_group(importlib.import_module(GROUPS[name][0]).app)
    group.name = name
    return group


class LazyCommands(MutableMapping[str, Any]):
    """The root's commands: the groups of :data:`GROUPS` are loaded when looked up (the
    names alone, ``keys()`` and ``in``, load nothing)."""

    def __init__(self, loaded: MutableMapping[str, Any], load: Callable[[str], Any]) -> None:
        # Typer lists a group's own commands before its sub-groups.
        self._order = [*(n for n in loaded if n not in GROUPS), *GROUPS]
        self._loaded = dict(loaded)
        self._load = load

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            if name not in GROUPS:
                raise KeyError(name)
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def __setitem__(self, name: str, command: Any) -> None:
        if name not in self._order:
            self._order.append(name)
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        self._order.remove(name)
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._order))

    def __len__(self) -> int:
        return len(self._order)


class LazyRoot(DetenteGroup):
    """The root group: runs a component's group after importing it; lists it by its help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = LazyCommands(self.commands, load_group)

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands.keys())

    def get_command(self, ctx: Any, name: str) -> Any:
        commands = self.commands
        assert isinstance(commands, LazyCommands)
        if name in GROUPS and not commands.is_loaded(name) and not ctx.resilient_parsing:
            return _listed(name)  # for help; resolve_command loads the group it runs
        return commands.get(name)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] in GROUPS:
            self.commands[args[0]]  # loads the group that runs
        return super().resolve_command(ctx, args)


def _listed(name: str) -> Any:
    """A stand-in for an unloaded group in the root's help: its name and help only."""
    return typer.core.TyperGroup(name=name, help=GROUPS[name][1])


app = command_group(
    "Detente: train XGBoost across parties inside an attested enclave.", cls=LazyRoot
)


@app.callback()
def root() -> None:
    # A callback makes Typer build a group even though only `demo` is registered here.
    pass


class Join(StrEnum):
    """The demo's two ways of sharing the data among the parties."""

    horizontal = "horizontal"
    vertical = "vertical"


@app.command("demo")
def demo(
    data: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="CSV file (default: the bundled UCI credit data)"
        ),
    ] = None,
    label: Annotated[
        str | None,
        typer.Option(help="Label column: 0/1 (binary), class numbers or amounts (regression)"),
    ] = None,
    id_column: Annotated[
        str | None, typer.Option("--id", help="Identifier column, not a feature")
    ] = None,
    split_by: Annotated[
        str | None, typer.Option(help="Column whose values decide each row's party")
    ] = None,
    parties: Annotated[int, typer.Option(min=2, max=16, help="Number of parties")] = 3,
    workdir: Annotated[Path | None, typer.Option(help="Keep every role's files here")] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Boosting rounds")] = 200,
    join: Annotated[
        Join,
        typer.Option(
            help="horizontal: the parties hold different rows; vertical: different columns "
            "about the same customers, matched by --id, the label with one party",
        ),
    ] = Join.horizontal,
    sealed: Annotated[
        bool,
        typer.Option(
            "--sealed",
            help="Keep the model in the enclave (released to nobody); each party then scores "
            "its own held-out rows through it and sees the budget left",
        ),
    ] = False,
    dashboard: Annotated[
        bool,
        typer.Option(
            "--dashboard",
            help="Serve the coordinator's dashboard, and keep it and the roles running after "
            "the job until Ctrl-C; prints its address and login token",
        ),
    ] = False,
    dashboard_port: Annotated[
        int,
        typer.Option(
            "--dashboard-port", min=0, max=65535, help="With --dashboard: port on 127.0.0.1"
        ),
    ] = 8765,
) -> None:
    """Run the whole three-party flow with real processes (SIMULATION enclave)."""
    from detente import demo as run_demo  # numpy, pyarrow and xgboost load only for the demo

    code = run_demo.main(
        data,
        label,
        id_column,
        split_by,
        parties,
        workdir,
        rounds,
        join.value,
        sealed,
        dashboard_port if dashboard else None,
    )
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
