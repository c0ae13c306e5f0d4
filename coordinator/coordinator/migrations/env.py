"""Alembic's entry point: runs migrations on the connection passed in by
:func:`coordinator.migrations.upgrade` (no alembic.ini: the URL is the coordinator's)."""

from __future__ import annotations

from alembic import context

from coordinator.store.tables import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: batch mode copies the table instead.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
