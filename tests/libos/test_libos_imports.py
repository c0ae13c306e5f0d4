"""What enclave code can import: the image's packages, the stdlib, measured distributions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from libos_testkit import make_instance, run_cli

from libos import image
from libos.config import DEFAULTS

ENTRY = """
import importlib
import json


def main(argv):
    out = {}
    for name in argv:
        try:
            module = importlib.import_module(name)
            out[name] = getattr(module, "__file__", None) or "builtin"
        except ImportError as exc:
            out[name] = "refused: " + str(exc)
    print(json.dumps(out))
    return 0
"""


@pytest.fixture
def entry_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    src = tmp_path / "src"
    (src / "libos_test_entry").mkdir(parents=True)
    (src / "libos_test_entry" / "__init__.py").write_text("")
    (src / "libos_test_entry" / "main.py").write_text(ENTRY)
    monkeypatch.syspath_prepend(str(src))
    return "libos_test_entry"


def imports(instance: Path, *names: str) -> dict[str, str]:
    result = run_cli("run", str(instance), *names)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_only_measured_code_is_importable(tmp_path: Path, entry_package: str) -> None:
    instance = make_instance(
        tmp_path / "i",
        entry_point=f"{entry_package}.main:main",
        packages=["libos", "protocols", entry_package],
        distributions=["cryptography"],
    )
    image.build(instance)
    root = str((instance / "image" / "root").resolve())
    out = imports(instance, "json", "cryptography.hazmat", "protocols.hpke", "typer", "coordinator")
    assert out["json"] != "" and not out["json"].startswith("refused")
    assert "site-packages" in out["cryptography.hazmat"]
    assert out["protocols.hpke"].startswith(root)
    # Installed on the host but not measured: refused.
    assert out["typer"].startswith("refused") and "distributions" in out["typer"]
    assert out["coordinator"].startswith("refused")


def test_default_distributions_are_importable(tmp_path: Path, entry_package: str) -> None:
    instance = make_instance(
        tmp_path / "i",
        entry_point=f"{entry_package}.main:main",
        packages=["libos", "protocols", entry_package],
        distributions=DEFAULTS["distributions"],
    )
    image.build(instance)
    names = ["grpc", "google.protobuf", "numpy", "pyarrow", "xgboost", "cryptography.x509"]
    out = imports(instance, *names)
    assert not any(v.startswith("refused") for v in out.values()), out
