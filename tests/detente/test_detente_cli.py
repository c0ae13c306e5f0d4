"""The `detente` root imports a component's commands only when they run (fixed costs)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import typer.main

from detente.cli import GROUPS, app

RUN_AND_LIST = """
import json, sys
from detente.cli import app
try:
    app(sys.argv[1:], prog_name="detente")
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


def modules_after(args: list[str], home: Path) -> list[str]:
    """The modules a fresh `detente ARGS` has loaded when it ends (whatever its outcome)."""
    env = {**os.environ, "DETENTE_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST, *args], capture_output=True, text=True, env=env
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def of(modules: list[str], *packages: str) -> list[str]:
    return [m for m in modules if m.split(".")[0] in packages]


def test_the_root_help_lists_every_group_without_importing_one(tmp_path: Path) -> None:
    loaded = modules_after(["--help"], tmp_path)
    assert of(loaded, "party_client", "coordinator", "libos", "grpc") == []
    done = subprocess.run(
        [sys.executable, "-m", "detente", "--help"], capture_output=True, text=True
    )
    for name in GROUPS:
        assert f" {name} " in done.stdout, done.stdout


def test_a_party_command_imports_neither_other_components_nor_quote_verification(
    tmp_path: Path,
) -> None:
    """`detente party status` (here failing for want of an identity, after its imports)."""
    loaded = modules_after(["party", "status", "job-1"], tmp_path)
    assert "party_client.job_control" in loaded and "grpc" in loaded
    assert of(loaded, "coordinator", "libos", "enclave_worker", "pyarrow") == []
    assert "party_client.attest_cli" not in loaded
    assert "protocols.attestation" not in loaded and "protocols.collateral" not in loaded


def test_the_listed_help_is_each_groups_own() -> None:
    for name, (module, listed) in GROUPS.items():
        group = typer.main.get_group(importlib.import_module(module).app)
        assert group.help is not None and group.help.split("\n")[0] == listed, name


def test_the_whole_tree_loads_for_tools_that_walk_it() -> None:
    root = typer.main.get_command(app)
    assert set(root.commands) == {*GROUPS, "demo"}
    assert "upload" in root.commands["party"].commands
    assert "serve" in root.commands["coordinator"].commands
