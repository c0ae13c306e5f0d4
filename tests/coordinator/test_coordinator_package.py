"""The coordinator's public surface: what `__all__` promises exists; importing it is cheap."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import coordinator
from coordinator import store


@pytest.mark.parametrize("package", ["coordinator", "coordinator.store", "coordinator.handler"])
def test_every_name_in_all_exists(package: str) -> None:
    module = importlib.import_module(package)
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module)


def test_a_name_outside_the_api_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        coordinator.nothing_here  # type: ignore[attr-defined]


def test_the_api_names_the_objects_of_their_modules() -> None:
    from coordinator.server import start
    from coordinator.store.sql import SqlStore

    assert coordinator.start is start
    assert coordinator.SqlStore is SqlStore is store.SqlStore


def test_there_is_one_audit_chain_check() -> None:
    from coordinator.store import audit

    assert coordinator.verify_audit_chain is store.verify_audit_chain is audit.verify_audit_chain
    assert not hasattr(store.SqlStore, "verify_audit_chain")


def test_importing_the_package_and_its_cli_loads_no_server() -> None:
    # `detente --help` imports coordinator.cli; the API must not pull in gRPC or SQLAlchemy.
    code = (
        "import sys, coordinator, coordinator.cli; "
        "print(sorted(m for m in ('grpc', 'sqlalchemy', 'coordinator.server') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
