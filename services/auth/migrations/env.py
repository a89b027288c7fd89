"""Alembic environment for the auth service's tables (keys, teams, usage)."""

from services.auth.store import VERSION_TABLE, Base
from services.common.migrations import run_env

run_env(Base.metadata, VERSION_TABLE)
