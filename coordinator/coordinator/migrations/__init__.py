"""The coordinator's database schema over time: Alembic migrations, shipped as package data.

``upgrade(url)`` brings a database to the newest schema (`detente coordinator
migrate`); ``require_current(engine)`` refuses a database that is not at it,
naming that command. A database made before migrations existed (every table
of the first revision, no ``alembic_version``) is recognised and stamped at
the first revision before upgrading.

Why a fresh SQLite file is migrated on first start and nothing else is:
docs/operations.md, databases.
"""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Connection, Engine

from protocols.errors import SetupError

FIRST_REVISION = "0001_initial"
# A table every revision has: a database holding it but no alembic_version
# predates migrations (the schema of FIRST_REVISION, made by create_all).
_MARKER_TABLE = "audit_log"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("coordinator.migrations")))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest schema revision this coordinator knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def is_empty(engine: Engine) -> bool:
    """True if the database has no table at all (nothing to lose by creating the schema)."""
    return not inspect(engine).get_table_names()


def upgrade(url: str) -> tuple[str | None, str]:
    """Migrate the database at ``url`` to the newest schema; return (from, to) revisions."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            before = current_revision(connection)
            config = _config(connection)
            if before is None and inspect(connection).has_table(_MARKER_TABLE):
                command.stamp(config, FIRST_REVISION)
                before = FIRST_REVISION
            command.upgrade(config, "head")
            return before, head_revision()
    finally:
        engine.dispose()


def require_current(engine: Engine, url_for_humans: str) -> None:
    """Raise SetupError unless the database is at the newest schema."""
    head = head_revision()
    with engine.connect() as connection:
        current = current_revision(connection)
    if current == head:
        return
    where = f"--db-url {url_for_humans}"
    if current is None:
        state = "has no schema yet (or one made before migrations)"
    else:
        try:
            ScriptDirectory.from_config(_config()).get_revision(current)
        except Exception:  # an unknown revision: a newer coordinator migrated it
            raise SetupError(
                f"the coordinator database is at schema revision {current}, which this "
                f"coordinator does not know (newest known: {head}): it was migrated by a newer "
                "version; run that version, or restore a backup"
            ) from None
        state = f"is at schema revision {current}, not the newest ({head})"
    raise SetupError(
        f"the coordinator database {state}: run `detente coordinator migrate {where}` "
        "(back the database up first), then start the coordinator again"
    )
