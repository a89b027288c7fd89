"""Alembic at start-up, one history per service.

Each service keeps its migrations beside its store and records its revision in
its own version table, so several services can upgrade one shared database
independently. A database already at the newest revision (every start but the
first after an upgrade) is recognised without importing Alembic. One that is
not is upgraded by a short-lived child process (`python -m
services.common.migrations`, told what to do on its stdin): Alembic, Mako and
the migration work would otherwise stay in the service's memory for its whole
life (10-14 MiB). Only a SQLite database in this process's memory is upgraded
in-process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import MetaData, create_engine, inspect, text
from sqlalchemy.engine import Engine

# A migration of a large ledger may take long; past this the service gives up starting.
CHILD_TIMEOUT_S = 3600.0

REVISION = re.compile(r"""^(down_)?revision(?::[^=]*)? = (?:["']([^"']+)["']|None)""", re.M)


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
    head = head_revision(directory)
    if head is not None and current_revision(engine, version_table) == head:
        return
    if _migrated_in_child(engine):
        _upgrade_in_child(engine, directory, version_table, adopt)
    else:
        upgrade(engine, directory, version_table, adopt)


class MigrationFailed(RuntimeError):
    """The child process upgrading the database failed (its error is in its log)."""


def _migrated_in_child(engine: Engine) -> bool:
    # A child reaches every database but one that lives in this process (a SQLite
    # ":memory:" or URI database, kept in-process to be safe).
    database = engine.url.database or ""
    return engine.dialect.name != "sqlite" or not (
        database in ("", ":memory:") or database.startswith("file:")
    )


def _upgrade_in_child(
    engine: Engine, directory: Path, version_table: str, adopt: tuple[str, str] | None
) -> None:
    # On stdin, not the command line: the URL may hold the database's password.
    task = {
        "url": engine.url.render_as_string(hide_password=False),
        "directory": str(directory),
        "version_table": version_table,
        "adopt": adopt,
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.common.migrations"],
        input=json.dumps(task).encode(),
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise MigrationFailed(
            f"upgrading {version_table} failed in a child process (exit code {done.returncode})"
        )


def upgrade(
    engine: Engine,
    directory: Path,
    version_table: str,
    adopt: tuple[str, str] | None = None,
) -> None:
    """Alembic's upgrade to the newest revision, in this process (see `migrate`)."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

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


def head_revision(directory: Path) -> str | None:
    """The newest revision in `directory` (the one no other revises), read from
    the migration files; None when that is not one clear revision (let Alembic judge)."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in (directory / "versions").glob("*.py"):
        for down, revision in REVISION.findall(path.read_text()):
            if revision:
                (revised if down else revisions).add(revision)
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


def current_revision(engine: Engine, version_table: str) -> str | None:
    """The revision the database records; None if none (or several: branches)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table(version_table):
            return None
        rows = connection.execute(text(f"SELECT version_num FROM {version_table}")).all()
    return str(rows[0][0]) if len(rows) == 1 else None


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


def _child() -> None:
    """`python -m services.common.migrations`: the upgrade `migrate` hands over."""
    from core import logs

    task = json.load(sys.stdin)
    version_table = task["version_table"]
    logs.setup(
        version_table.removesuffix("_alembic_version"), os.environ.get("AQUEDUCT_LOG_LEVEL", "INFO")
    )
    engine = create_engine(task["url"])
    try:
        adopt = task["adopt"]
        upgrade(engine, Path(task["directory"]), version_table, tuple(adopt) if adopt else None)
    finally:
        engine.dispose()


if __name__ == "__main__":
    _child()
