"""One convention for every `detente` command group: settings, errors, exit codes, output.

Every group (`detente party`, `detente attest`, `detente coordinator`,
`detente libos`, and the root that holds `detente demo`) is made by
:func:`command_group`, so all of them share:

- **Typer settings**: tracebacks never print local variables (they may hold
  rows or keys); a group run without arguments prints its help; ``--help``
  ends with the exit-code table (:data:`EXIT_CODES`).
- **one error handler**: a :class:`~protocols.errors.DetenteError` leaving a
  command is printed on stderr as ``error: MESSAGE`` (with the rules of a
  refused verdict, if it carries one), never as a traceback, and the command
  exits with the code of its class (:func:`exit_code_for`). A usage error (a
  missing or bad argument or option) is printed the same way, followed by the
  command's usage and the ``--help`` to read, and exits 2 as click does.
- **one ``--json`` option** (:data:`JsonOption`): one JSON document with
  sorted keys on stdout (:func:`emit_json`), stable across releases, unlike
  the human output.
- **one SIMULATION warning** (:func:`warn_simulation`), on stderr, so JSON on
  stdout stays parseable.
- **soft-wrapped Rich consoles** (:data:`out`, :data:`err`): lines stay whole
  when piped or grepped.

Why in ``protocols``: the dependency direction (protocols ← libos ←
enclave_worker; protocols ← coordinator; protocols ← party_client) leaves
``protocols`` the one package every component may import, and a convention
written twice is two conventions. Only the command-line modules import this
one; nothing inside the enclave does (typer and rich are not in its image).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, NoReturn, Protocol

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from protocols.errors import DetenteError

# --------------------------------------------------------------------------- exit codes

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # click's code for usage errors
# `detente libos run` passes its entry point's exit code through, so its own
# refusal needs a code entry points do not use for themselves: sysexits.h EX_SOFTWARE.
EXIT_RUN_REFUSED = 70

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_ERROR, "failed or refused: the message after 'error:' says why and what to do next"),
    (EXIT_USAGE, "usage error: a missing or bad argument or option"),
    (EXIT_RUN_REFUSED, "`detente libos run` refused to start the image (else: its entry's code)"),
)
# The epilog of every group's and command's --help; Typer's Rich help keeps its lines.
EXIT_CODES_HELP = "Exit codes:\n" + "\n".join(f"{code:<3} {text}" for code, text in EXIT_CODES)


class RunRefused(DetenteError):
    """`detente libos run` refused to start an image (its verification or launch failed)."""


# Most specific class first; every DetenteError has a code.
_EXIT_FOR_ERROR: tuple[tuple[type[DetenteError], int], ...] = (
    (RunRefused, EXIT_RUN_REFUSED),
    (DetenteError, EXIT_ERROR),
)


def exit_code_for(exc: DetenteError) -> int:
    """The exit code of an expected error, by its class (see :data:`EXIT_CODES`)."""
    return next(code for kind, code in _EXIT_FOR_ERROR if isinstance(exc, kind))


# --------------------------------------------------------------------------- output

out = Console(soft_wrap=True)  # lines stay whole when piped or grepped
err = Console(stderr=True, soft_wrap=True)

SIMULATION_WARNING = (
    "WARNING: SIMULATION enclave — there is NO hardware protection. Whoever runs the enclave "
    "host can read everything sealed to it and forge its evidence. Use simulation only with "
    "test data."
)

JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON document (sorted keys, stable) instead of text."),
]


def emit_json(doc: Any) -> None:
    """The ``--json`` output: one document, sorted keys, one line, on stdout."""
    print(json.dumps(doc, sort_keys=True))


def warn_simulation() -> None:
    """The one SIMULATION warning, on stderr, for every command that relies on simulation."""
    err.print(f"[bold yellow]{escape(SIMULATION_WARNING)}[/]", highlight=False)


class VerdictRule(Protocol):
    """One rule of an attestation verdict (protocols.attestation.Rule has this shape)."""

    @property
    def name(self) -> str: ...

    @property
    def passed(self) -> bool: ...

    @property
    def detail(self) -> str: ...


def print_verdict(verdict: Iterable[VerdictRule], console: Console) -> None:
    """Each rule of a verdict on its own line: pass or FAIL, its name and why."""
    for rule in verdict:
        mark = "[green]pass[/]" if rule.passed else "[red]FAIL[/]"
        console.print(f"  {mark} {escape(rule.name)}: {escape(rule.detail)}", highlight=False)


# --------------------------------------------------------------------------- errors


def report_error(exc: DetenteError) -> int:
    """Print an expected error as ``error: …`` (and its verdict); return its exit code."""
    err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    verdict = getattr(exc, "verdict", None)
    if verdict:
        print_verdict(verdict, err)
    return exit_code_for(exc)


class UsageError(typer.BadParameter):
    """Options that do not go together (one needs another): a usage error, exit 2.

    For a single option's bad value, raise ``typer.BadParameter`` with its
    ``param_hint``; this class prints its message as given.
    """

    def format_message(self) -> str:
        return self.message


def _report_usage(exc: typer.TyperException) -> int:
    """Print click's usage error (Typer ≥ 0.29 raises them as TyperExceptions) our way."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # the help itself, already printed
        return exc.exit_code
    err.print(f"[bold red]error:[/] {escape(exc.format_message())}", highlight=False)
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        err.print(escape(ctx.get_usage()), highlight=False)
        err.print(f"see `{escape(ctx.command_path)} --help`", highlight=False)
    return exc.exit_code


def _standalone(main: Callable[..., Any], args: Any, prog_name: Any, extra: Any) -> NoReturn:
    """Run a command line as click's standalone mode does, printing errors our way."""
    try:
        code = main(args, prog_name, standalone_mode=False, **extra)
    except typer.TyperException as exc:
        sys.exit(_report_usage(exc))
    except typer.Abort:
        err.print("[bold red]error:[/] aborted: nothing was done", highlight=False)
        sys.exit(EXIT_ERROR)
    # Outside standalone mode click returns the code of a typer.Exit, else the
    # command's return value (None: every command returns nothing).
    sys.exit(code if isinstance(code, int) else EXIT_OK)


class DetenteGroup(TyperGroup):
    """A command group that applies the convention to every command it runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            if command.epilog is None:  # groups have their own; commands show the same table
                command.epilog = EXIT_CODES_HELP

    def invoke(self, ctx: Any) -> Any:  # click's Context, which typer does not export
        try:
            return super().invoke(ctx)
        except DetenteError as exc:  # expected: a message, never a traceback
            raise typer.Exit(report_error(exc)) from None

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        extra = {"complete_var": complete_var, "windows_expand_args": windows_expand_args, **extra}
        if not standalone_mode:
            return super().main(args, prog_name, standalone_mode=False, **extra)
        _standalone(super().main, args, prog_name, extra)


def command_group(
    help: str,
    name: str | None = None,
    cls: type[DetenteGroup] = DetenteGroup,
    default_command: bool = False,
) -> typer.Typer:
    """A Typer app for one `detente` command group, with the shared settings and handler
    (``cls``: :class:`DetenteGroup` or a subclass of it). With ``default_command`` the
    group's callback runs when no subcommand is named (``detente coordinator workers``
    lists them) instead of printing the help."""
    return typer.Typer(
        name=name,
        help=help,
        cls=cls,
        # Tracebacks must never print local variables: they may hold rows or keys.
        pretty_exceptions_show_locals=False,
        no_args_is_help=not default_command,
        invoke_without_command=default_command,
        epilog=EXIT_CODES_HELP,
    )


__all__ = [
    "EXIT_CODES",
    "EXIT_CODES_HELP",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_RUN_REFUSED",
    "EXIT_USAGE",
    "SIMULATION_WARNING",
    "DetenteGroup",
    "JsonOption",
    "RunRefused",
    "UsageError",
    "command_group",
    "emit_json",
    "err",
    "exit_code_for",
    "out",
    "print_verdict",
    "report_error",
    "warn_simulation",
]
