"""The option every party command that checks the enclave shares: which attestation policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PolicyOption = Annotated[
    Path | None,
    typer.Option("--policy", help="Attestation policy TOML (default: DETENTE_HOME/policy.toml)"),
]
