"""Every `detente` command group follows protocols.cli_convention: same errors, codes and help.

Each group (party, attest, coordinator, libos, demo) is run through the real
entry point (``python -m detente``, a real process) with a bad argument and
with an operation that fails cheaply; the message must start with ``error:``
and say what to do, and the exit code must be the table's. The help of every
group shows the table, and every ``--json`` is the one shared option.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from detente.cli import app
from protocols.cli_convention import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_USAGE,
    JsonOption,
    command_group,
)

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ["party", "attest", "coordinator", "libos"]
COMPONENT_FOLDERS = [
    "protocols",
    "libos",
    "enclave-worker",
    "coordinator",
    "party-client",
    "experiments",
    "detente",
]


def detente(*args: str | Path, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETENTE_")}
    if home is not None:
        env["DETENTE_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "detente", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def check_error(done: subprocess.CompletedProcess[str], code: int, *says: str) -> None:
    assert done.returncode == code, done.stderr
    assert done.stderr.startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    for text in says:
        assert text in done.stderr, done.stderr


# --------------------------------------------------------------------------- bad arguments


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    """A missing or bad argument or option: exit 2, the message, the usage and the help to read."""
    cases: list[tuple[list[str | Path], str]] = [
        (["party", "status"], "Missing argument"),
        (["party", "propose", "--dataset", "d", "--label", "y", "--param", "depth"], "KEY=VALUE"),
        (["attest", "inspect", tmp_path / "quote", "--at", "-5"], "cannot be negative"),
        (
            ["coordinator", "serve", "--home", tmp_path / "c", "--enclave", "127.0.0.1:1"],
            "--enclave needs --enclave-policy FILE",
        ),
        (["libos", "export", tmp_path, tmp_path / "out", "--target", "sgx"], "only target"),
        (["demo", "--parties", "1"], "'--parties'"),
        (["demo", "--data", tmp_path / "missing.csv"], "does not exist"),
        (["no-such-group"], "No such command"),
    ]
    for args, says in cases:
        done = detente(*args)
        check_error(done, EXIT_USAGE, says, "Usage: detente", "--help`")
    assert not (tmp_path / "c").exists() and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- failing operations


def test_party_without_a_home_names_init(tmp_path: Path) -> None:
    done = detente("party", "status", "JOB", home=tmp_path / "empty")
    check_error(done, EXIT_ERROR, "no party identity", "run `detente party init` first")


def test_attest_of_a_missing_quote(tmp_path: Path) -> None:
    done = detente("attest", "inspect", tmp_path / "quote")
    check_error(done, EXIT_ERROR, f"cannot read quote {tmp_path / 'quote'}")


def test_coordinator_without_a_database_names_serve(tmp_path: Path) -> None:
    done = detente("coordinator", "audit", "verify", "--home", tmp_path)
    check_error(done, EXIT_ERROR, f"run `detente coordinator serve --home {tmp_path}`")


def test_libos_measure_of_an_unbuilt_image_names_build(tmp_path: Path) -> None:
    instance = tmp_path / "i"
    assert detente("libos", "init", instance).returncode == 0
    done = detente("libos", "measure", instance)
    check_error(done, EXIT_ERROR, f"run `detente libos build {instance}` first")
    assert done.stdout == ""


def test_demo_with_a_column_that_is_not_there(tmp_path: Path) -> None:
    data = tmp_path / "t.csv"
    data.write_text("a,b\n1,0\n2,1\n")
    done = detente("demo", "--data", data, "--label", "nope")
    check_error(done, EXIT_ERROR, f"column 'nope' is not in {data}")


def test_an_expected_error_carries_its_verdict() -> None:
    """Refused evidence prints each rule after the message, on stderr."""
    from protocols.attestation import EvidenceRefused, Rule

    cli = command_group("test")

    @cli.command()
    def refuse() -> None:
        raise EvidenceRefused([Rule("signature", True, "ok"), Rule("mrenclave", False, "[x] new")])

    @cli.command()
    def other() -> None:
        pass

    result = CliRunner().invoke(cli, ["refuse"])
    assert result.exit_code == EXIT_ERROR
    lines = result.stderr.splitlines()
    assert lines[0] == "error: enclave evidence refused — mrenclave: [x] new"
    assert lines[1:] == ["  pass signature: ok", "  FAIL mrenclave: [x] new"]


def test_a_memory_refusal_keeps_its_config_section() -> None:
    """The enclave's memory refusal names ``[resources]``: Rich markup must not eat it."""
    from libos import limits
    from protocols.errors import SetupError

    limits.install(limits.Limits(64 * limits.MIB, 1, 1), cap_address_space=False)
    try:
        with pytest.raises(limits.MemoryLimitError) as refused:
            limits.check_allocation(1 << 30, "the feature matrix of job 'j'")
    finally:
        limits._installed = None
    cli = command_group("test")

    @cli.command()
    def results() -> None:  # as `detente party results` reports a failed job
        raise SetupError(f"job j is failed: {refused.value}")

    @cli.command()
    def other() -> None:
        pass

    result = CliRunner().invoke(cli, ["results"])
    assert result.exit_code == EXIT_ERROR
    assert "([resources] memory_mb in libos.toml)" in result.stderr


# --------------------------------------------------------------------------- help and options


@pytest.mark.parametrize("args", [[], *([g] for g in GROUPS), ["demo"], ["party", "approve"]])
def test_help_shows_the_exit_codes(args: list[str]) -> None:
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Exit codes:" in result.stdout
    for code, text in EXIT_CODES:
        assert f"{code:<3} {text}" in result.stdout


def commands(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    for name, child in getattr(node, "commands", {}).items():
        yield from commands(child, (*path, name))
    if not hasattr(node, "commands"):
        yield " ".join(path), node


def test_one_json_option_everywhere() -> None:
    """Every --json is the shared option: same name, same parameter, same help."""
    shared = JsonOption.__metadata__[0]
    seen = []
    for name, command in commands(typer.main.get_command(app)):
        for param in command.params:
            if "--json" in getattr(param, "opts", []):
                seen.append(name)
                assert param.name == "json_out", name
                assert param.opts == ["--json"] and param.help == shared.help, name
    assert {"party attest", "attest inspect", "coordinator enroll", "libos measure"} <= set(seen)


def test_every_group_is_made_by_the_convention() -> None:
    """Typer settings are set once: no module outside the convention builds its own app."""
    own = [
        str(path.relative_to(ROOT))
        for folder in COMPONENT_FOLDERS
        for path in (ROOT / folder).rglob("*.py")
        if "typer.Typer(" in path.read_text() and path.name != "cli_convention.py"
    ]
    assert own == []


def test_shell_completion_completes_commands_and_options(tmp_path: Path) -> None:
    """`detente --show-completion bash` prints the script `--install-completion` installs;
    the script asks `detente` itself, which completes commands and options."""
    script = detente("--show-completion", "bash", home=tmp_path)
    assert script.returncode == 0 and "_detente_completion" in script.stdout

    def complete(words: str) -> list[str]:
        env = {
            **os.environ,
            "_DETENTE_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - 1),
        }
        done = subprocess.run(
            [sys.executable, "-m", "detente"], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("detente party do") == ["doctor"]
    assert complete("detente party re") == ["reject", "retry", "results", "retire"]
    assert complete("detente party propose --dr") == ["--dry-run"]
    assert complete("detente party status JOB --fo") == ["--follow"]
