"""Alembic environment for the files service's table (file metadata)."""

from __future__ import annotations

from alembic import context

from services.files.store import VERSION_TABLE, Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()
