"""Alembic environment for the auth service's tables (keys, teams, usage)."""

from services.auth.store import VERSION_TABLE, metadata
from services.common.migrations import run_env

run_env(metadata, VERSION_TABLE)
