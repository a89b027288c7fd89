"""Alembic at start-up, one history per service.

Each service keeps its migrations beside its store and records its revision in
its own version table, so several services can upgrade one shared database
independently.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect, text
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
    with one_at_a_time(engine, f"migrate:{version_table}"):
        if adopt is not None:
            table, revision = adopt
            with engine.connect() as connection:
                context = MigrationContext.configure(
                    connection, opts={"version_table": version_table}
                )
                unversioned = context.get_current_revision() is None
                legacy = unversioned and inspect(connection).has_table(table)
            if legacy:
                command.stamp(config, revision)
        command.upgrade(config, "head")


def run_env(metadata: MetaData, version_table: str) -> None:
    """The body of a service's migrations/env.py: migrate the engine `migrate()` gave."""
    from alembic import context  # a proxy that only works inside an Alembic run

    engine = context.config.attributes["engine"]
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table=version_table,
            render_as_batch=True,  # SQLite alters tables by copying them
        )
        with context.begin_transaction():
            context.run_migrations()


@contextlib.contextmanager
def one_at_a_time(engine: Engine, name: str) -> Iterator[None]:
    """Hold the lock `name` across every process using this database.

    Replicas starting together migrate (and create the first admin key) in turn,
    not side by side: two would both create the version table, or both find no
    admin key and make one each. PostgreSQL: a session-level advisory lock.
    SQLite: an exclusive file lock beside the database file (it serialises
    writers, but not a check-then-write across transactions). Elsewhere: none.
    """
    if engine.dialect.name == "postgresql":
        key = zlib.crc32(f"aqueduct-{name}".encode())
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        return
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield  # one process only (or not a file we can lock beside)
        return
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
    # Private like the database beside it (0600, whatever the umask).
    lock = os.open(f"{database}.{safe}.lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(lock, 0o600)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield
