"""Dependency distributions are measured file by file and checked at start and at import.

Tampering with site-packages must not touch the shared virtual environment, so
this module makes its own: a real venv (``python -m venv``) with real copies of
the files of cryptography, its requirements and packaging, built and run with
that venv's interpreter, as a user would.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from libos_testkit import REPO

ENTRY = """
import importlib
import json


def main(argv):
    out = {}
    for name in argv:
        try:
            module = importlib.import_module(name)
            out[name] = "ok " + str(getattr(module, "__file__", None))
        except ImportError as exc:
            out[name] = "refused " + type(exc).__name__ + ": " + str(exc)
    print(json.dumps(out))
    return 0
"""

DRIVER = """
import sys
from pathlib import Path
from libos import image, launcher
from libos_testkit import make_instance
command, instance = sys.argv[1], Path(sys.argv[2])
if command == "build":
    make_instance(instance, entry_point="libos_test_deps.main:main",
                  packages=["libos", "protocols", "libos_test_deps"],
                  distributions=["cryptography"])
    image.build(instance)
else:
    sys.exit(launcher.run(instance, sys.argv[3:]))
"""

DISTRIBUTIONS = ("cryptography", "cffi", "pycparser", "packaging")


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding copies of the distributions the image and the build need."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next(root.glob("lib/python*/site-packages"))
    for name in DISTRIBUTIONS:
        dist = importlib.metadata.distribution(name)
        for f in dist.files or []:
            source = Path(str(dist.locate_file(f)))
            if f.parts[0] == ".." or "__pycache__" in f.parts or not source.is_file():
                continue
            target = site / f
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return root


@pytest.fixture(scope="module")
def deps_instance(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    (src / "libos_test_deps").mkdir()
    (src / "libos_test_deps" / "__init__.py").write_text("")
    (src / "libos_test_deps" / "main.py").write_text(ENTRY)
    instance = tmp_path_factory.mktemp("deps") / "instance"
    drive(venv, src, "build", instance).check_returncode()
    return instance


def drive(
    venv: Path, src: Path | None, command: str, instance: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    paths = [REPO / "libos", REPO / "protocols", REPO / "tests" / "libos"]
    if src is not None:
        paths.append(src)
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", DRIVER, command, str(instance), *args],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(str(p) for p in paths)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def site_of(venv: Path) -> Path:
    return next(venv.glob("lib/python*/site-packages"))


@contextmanager
def changed(path: Path, data: bytes | None = None) -> Iterator[None]:
    """Append a byte to ``path`` (or create it with ``data``); restore it afterwards."""
    before = path.read_bytes() if path.exists() else None
    path.write_bytes(data if data is not None else (before or b"") + b"\n")
    try:
        yield
    finally:
        if before is None:
            path.unlink()
        else:
            path.write_bytes(before)


def run(venv: Path, instance: Path, *modules: str) -> subprocess.CompletedProcess[str]:
    return drive(venv, None, "run", instance, *modules)


def test_measured_dependencies_import_and_unmeasured_files_do_not(
    venv: Path, deps_instance: Path
) -> None:
    site = site_of(venv)
    with changed(site / "cffi" / "unmeasured.py", b"SECRET_SINK = 1\n"):
        result = run(venv, deps_instance, "cffi.api", "_cffi_backend", "cffi.unmeasured")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["cffi.api"] == f"ok {site / 'cffi' / 'api.py'}"
    assert out["_cffi_backend"].startswith(f"ok {site}")  # an extension module
    assert out["cffi.unmeasured"].startswith("refused UnmeasuredModuleError")
    assert "'cffi/unmeasured.py' is not in the image manifest" in out["cffi.unmeasured"]


def test_changed_dependency_module_is_refused_at_import(venv: Path, deps_instance: Path) -> None:
    with changed(site_of(venv) / "cffi" / "api.py"):
        result = run(venv, deps_instance, "json", "cffi.api")
    assert result.returncode == 70 and result.stdout == ""
    assert "dependency file 'cffi/api.py' of distribution 'cffi' differs" in result.stderr
    assert "at import" in result.stderr


def test_changed_extension_module_is_refused_at_import(venv: Path, deps_instance: Path) -> None:
    extension = next(site_of(venv).glob("_cffi_backend.*.so"))
    with changed(extension):
        result = run(venv, deps_instance, "_cffi_backend")
    assert result.returncode == 70 and result.stdout == ""
    assert f"dependency file '{extension.name}' of distribution 'cffi' differs" in result.stderr


def test_changed_non_module_file_is_refused_at_start(venv: Path, deps_instance: Path) -> None:
    # Shared libraries and data are loaded without asking Python: checked before anything runs.
    metadata = next(site_of(venv).glob("pycparser-*.dist-info")) / "METADATA"
    with changed(metadata):
        result = run(venv, deps_instance)
    assert result.returncode == 70 and result.stdout == ""
    assert f"dependency file '{metadata.parent.name}/METADATA'" in result.stderr
    assert "differs from the image manifest" in result.stderr


def test_changed_module_loaded_while_starting_is_refused(venv: Path, deps_instance: Path) -> None:
    # cryptography is imported to check the manifest's signature, before the
    # manifest can be trusted: the finder records it and checks it right after.
    with changed(site_of(venv) / "cryptography" / "__about__.py"):
        result = run(venv, deps_instance)
    assert result.returncode == 70 and result.stdout == ""
    assert "'cryptography/__about__.py'" in result.stderr
    assert "when the enclave started" in result.stderr


def test_build_refuses_a_file_that_differs_from_its_record(venv: Path, tmp_path: Path) -> None:
    with changed(site_of(venv) / "pycparser" / "c_ast.py"):
        result = drive(venv, tmp_path, "build", tmp_path / "instance")
    assert result.returncode != 0
    assert "file 'pycparser/c_ast.py' differs from the hash its RECORD lists" in result.stderr
