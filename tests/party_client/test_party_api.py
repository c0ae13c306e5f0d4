"""The party library's public surface: `party_client.__all__`, loaded lazily, protobuf-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import party_client

PACKAGE = Path(party_client.__file__).resolve().parent


def test_every_public_name_resolves_to_its_module() -> None:
    assert sorted(party_client.__all__) == sorted(party_client._MODULE_OF)
    for name in party_client.__all__:
        value = getattr(party_client, name)
        module = getattr(value, "__module__", None)
        if module is not None and callable(value):
            assert module == f"party_client.{party_client._MODULE_OF[name]}", name


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_verb"):
        getattr(party_client, "no_such_verb")


def test_the_cli_loads_no_grpc_until_a_command_runs() -> None:
    """`detente --help` stays fast: the package and its CLI import the library lazily."""
    code = "import sys, party_client.cli; print(sorted(m for m in sys.modules if 'grpc' in m))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_only_the_grpc_edge_touches_protobuf() -> None:
    """remote.py converts replies to dataclasses; no other module sees a _pb2 class."""
    touching = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "protocols.wire" in path.read_text() or "_pb2" in path.read_text()
    )
    assert touching == ["remote.py"]
