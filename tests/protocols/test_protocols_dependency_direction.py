"""The dependency direction (docs/architecture.md, components), checked on every import.

protocols ← libos ← enclave_worker; protocols ← coordinator; protocols ← party_client.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = {
    "protocols": "protocols/protocols",
    "libos": "libos/libos",
    "enclave_worker": "enclave-worker/enclave_worker",
    "coordinator": "coordinator/coordinator",
    "party_client": "party-client/party_client",
}
PROJECT_PACKAGES = {*COMPONENTS, "experiments", "detente"}
ALLOWED = {
    "protocols": set(),
    "libos": {"protocols"},
    "enclave_worker": {"protocols", "libos"},
    "coordinator": {"protocols"},
    "party_client": {"protocols"},
}


def imported_packages(source: str, filename: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import, including ones inside functions."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(component: str, folder: Path) -> list[str]:
    forbidden = PROJECT_PACKAGES - ALLOWED[component] - {component}
    bad = []
    for path in sorted(folder.rglob("*.py")):
        for line, package in imported_packages(path.read_text(), str(path)):
            if package in forbidden:
                bad.append(f"{path.relative_to(folder.parent.parent)}:{line} imports {package}")
    return bad


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_dependency_direction(component: str) -> None:
    folder = REPO / COMPONENTS[component]
    bad = violations(component, folder)
    allowed = ", ".join(sorted(ALLOWED[component])) or "no other Detente component"
    assert not bad, (
        f"{component} may import only {allowed} (docs/architecture.md, components), but: "
        + "; ".join(bad)
    )


def test_checker_finds_violations(tmp_path: Path) -> None:
    folder = tmp_path / "coordinator" / "coordinator"
    (folder / "sub").mkdir(parents=True)
    (folder / "ok.py").write_text("import protocols.keys\nfrom . import sibling\nimport json\n")
    (folder / "sub" / "bad.py").write_text(
        "def f():\n    from enclave_worker.service import run\n    import party_client\n"
    )
    assert violations("coordinator", folder) == [
        "coordinator/coordinator/sub/bad.py:2 imports enclave_worker",
        "coordinator/coordinator/sub/bad.py:3 imports party_client",
    ]
    assert violations("coordinator", tmp_path / "missing") == []
