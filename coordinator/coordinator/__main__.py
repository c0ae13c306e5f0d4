"""`python -m coordinator …`: the same commands as `detente coordinator …`."""

from coordinator.cli import app

app(prog_name="coordinator")
