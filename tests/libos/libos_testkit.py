"""Helpers for libos tests: instances built from this repository's own sources."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from libos import image

REPO = Path(__file__).resolve().parents[2]
# A small image: the probe entry point (test support, in libos_test_probes/)
# needs only libos and protocols besides its own package.
PROBES = "libos_test_probes"
PROBE = {
    "entry_point": f"{PROBES}.probe:main",
    "packages": ["libos", "protocols", PROBES],
    "distributions": ["cryptography"],
}


def write_config(instance: Path, **settings: Any) -> None:
    """Rewrite libos.toml with ``settings`` (keys of libos.toml) on top of the existing file."""
    import tomllib

    current = tomllib.loads((instance / "libos.toml").read_text())
    current.update(settings)
    lines = []
    tables = {}
    for key, value in current.items():
        if isinstance(value, dict):
            tables[key] = value
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            # An array of tables ([[mounts]]) as an inline array of inline tables.
            rows = ", ".join(
                "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in row.items()) + "}"
                for row in value
            )
            lines.append(f"{key} = [{rows}]")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    (instance / "libos.toml").write_text("\n".join(lines) + "\n")


def make_instance(instance: Path, signer_key: Path | None = None, **settings: Any) -> Path:
    image.init(instance, signer_key)
    write_config(instance, **{**PROBE, **settings})
    return instance


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m libos.cli ARGS` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "libos.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
