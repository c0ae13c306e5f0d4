"""Detente installs like any Python package: the wheel, in a clean virtualenv, runs the demo.

The wheel is built from a copy of the sources (setuptools builds in the source
tree and reuses its build/ folder, where a module deleted since the last build
would linger and land in the wheel), installed without the checkout's
virtualenv (its dependencies come from the package registry; pip's cache makes
that quick), and `detente demo` runs from a folder outside the checkout, so
every file it reads at run time must be package data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from protocols.cli_convention import SIMULATION_WARNING

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
# Read at run time with importlib.resources; a wheel without them fails late and obscurely.
PACKAGE_DATA = [
    "protocols/intel_sgx_root_ca.der",
    "detente/data/UCI_Credit_Card.csv",
    "detente/data/README.md",
    # The dashboard's pages and stylesheet (coordinator.dashboard serves nothing from elsewhere).
    "coordinator/dashboard/templates/base.html",
    "coordinator/dashboard/templates/job.html",
    "coordinator/dashboard/static/dashboard.css",
]


def _sources(into: Path) -> Path:
    """Copy what the build reads: pyproject.toml, the README and each package folder."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    folders = {Path(p).parts[0] for p in config["tool"]["setuptools"]["package-dir"].values()}
    into.mkdir()
    for name in ("pyproject.toml", config["project"]["readme"]):
        shutil.copy2(ROOT / name, into / name)
    for folder in sorted(folders):
        shutil.copytree(
            ROOT / folder,
            into / folder,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info"),
        )
    return into


def _clean_env() -> dict[str, str]:
    """This environment (pip's settings included) without anything pointing into the checkout."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    return {
        k: v
        for k, v in os.environ.items()
        if k not in dropped and not k.startswith(("DETENTE_", "PYTEST_"))
    }


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        args, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def test_the_wheel_runs_the_demo_from_a_clean_virtualenv(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    pip_quiet = ["--quiet", "--disable-pip-version-check"]
    source = _sources(tmp_path / "source")
    _run([sys.executable, "-m", "pip", "wheel", *pip_quiet, "--no-deps", "-w", str(wheels),
          str(source)], tmp_path, 300)  # fmt: skip
    (wheel,) = wheels.glob("detente-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(PACKAGE_DATA) <= names, sorted(set(PACKAGE_DATA) - names)
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"protocols", "libos", "enclave_worker", "coordinator", "party_client",
                    "detente"}  # fmt: skip

    venv = tmp_path / "venv"
    try:
        _run([sys.executable, "-m", "venv", str(venv)], tmp_path, 120)
        python = venv / "bin" / "python"
        # No bytecode at install time: half of pip's time, and the enclave compiles from
        # its measured sources anyway (the host side compiles on first import).
        install = [str(python), "-m", "pip", "install", *pip_quiet, "--no-compile", str(wheel)]
        _run(install, tmp_path, 600)

        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        where = _run(
            [str(python), "-c", "import detente, protocols; print(detente.__file__)"],
            elsewhere,
            60,
        ).stdout
        assert Path(where.strip()).is_relative_to(venv), where  # the wheel, not the checkout
        done = _run([str(venv / "bin" / "detente"), "demo", "--rounds", "5"], elsewhere, 600)
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # several hundred MB of dependencies

    assert SIMULATION_WARNING in done.stderr  # the one warning of protocols.cli_convention
    assert "identical to plaintext: yes" in done.stdout
    assert done.stdout.count(" alone (") == 3
    assert "joint model from the enclave (24000 rows)" in done.stdout
    assert list(elsewhere.iterdir()) == []  # the demo kept nothing in the working directory
