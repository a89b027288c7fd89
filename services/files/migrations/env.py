"""Alembic environment for the files service's table (file metadata)."""

from services.common.migrations import run_env
from services.files.store import VERSION_TABLE, metadata

run_env(metadata, VERSION_TABLE)
