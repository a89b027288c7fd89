"""Alembic environment for the files service's table (file metadata)."""

from services.common.migrations import run_env
from services.files.store import VERSION_TABLE, Base

run_env(Base.metadata, VERSION_TABLE)
