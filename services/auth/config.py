"""Auth service settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.config import data_dir, env, env_float, listen_address


@dataclass(frozen=True)
class Settings:
    address: str
    data_dir: Path
    database_url: str
    bootstrap_key: str | None
    redis_url: str | None = None
    usage_retention_days: float = 90.0
    # A reservation's concurrency slot frees itself after this long even if the
    # caller never settles (it crashed): no slot leaks forever.
    reservation_lease_s: float = 3600.0

    @classmethod
    def from_env(cls) -> Settings:
        directory = data_dir()
        return cls(
            address=listen_address("auth"),
            data_dir=directory,
            database_url=env("AQUEDUCT_DATABASE_URL", f"sqlite:///{directory / 'aqueduct.db'}"),
            bootstrap_key=env("AQUEDUCT_BOOTSTRAP_KEY", "") or None,
            redis_url=env("AQUEDUCT_REDIS_URL", "") or None,
            usage_retention_days=env_float("AQUEDUCT_USAGE_RETENTION_DAYS", 90.0, minimum=0.001),
            reservation_lease_s=env_float("AQUEDUCT_RESERVATION_LEASE_S", 3600.0, minimum=1.0),
        )
