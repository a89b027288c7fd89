"""Helpers for tests of Alembic migrations: the recorded revision, a table's shape,
and what autogenerate would still change to match the models."""

from __future__ import annotations

from typing import Any

import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext


def revision(engine: sqlalchemy.Engine, version_table: str) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": version_table})
        return context.get_current_revision()


def shape(engine: sqlalchemy.Engine, table: str) -> dict[str, Any]:
    """Columns, keys and indexes of a table, comparable between two databases."""
    inspector = sqlalchemy.inspect(engine)
    return {
        "columns": [
            (c["name"], str(c["type"]), c["nullable"], c.get("default"), c.get("autoincrement"))
            for c in inspector.get_columns(table)
        ],
        "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
        "indexes": sorted(
            (i["name"], tuple(i["column_names"]), bool(i["unique"]))
            for i in inspector.get_indexes(table)
        ),
        "unique": sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)),
        "foreign_keys": inspector.get_foreign_keys(table),
    }


def drift(engine: sqlalchemy.Engine, metadata: sqlalchemy.MetaData) -> list[Any]:
    """What autogenerate would change in the metadata's tables to match the models
    (other tables in the database, such as another service's, are left out)."""

    def ours(name: str | None, kind: str, _parent: object) -> bool:
        return kind != "table" or name in metadata.tables

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_name": ours}
        )
        return list(compare_metadata(context, metadata))
