"""Alembic at start-up, one history per service.

Each service keeps its migrations beside its store and records its revision in
its own version table, so several services can upgrade one shared database
independently.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Engine


def migrate(
    engine: Engine,
    directory: Path,
    version_table: str,
    *,
    adopt: tuple[str, str] | None = None,
) -> None:
    """Upgrade the tables of the migrations in `directory` to their newest revision.

    `adopt` is (table, revision) for databases made before the service used
    Alembic: if that table exists but no revision is recorded, the database is
    stamped at that revision instead of having its tables created again.
    The directory's env.py takes the engine from `config.attributes["engine"]`.
    """
    config = Config()
    config.set_main_option("script_location", str(directory))
    config.attributes["engine"] = engine
    if adopt is not None:
        table, revision = adopt
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": version_table})
            unversioned = context.get_current_revision() is None
            legacy = unversioned and inspect(connection).has_table(table)
        if legacy:
            command.stamp(config, revision)
    command.upgrade(config, "head")
