"""Auth service settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.config import data_dir, env, listen_address


@dataclass(frozen=True)
class Settings:
    address: str
    data_dir: Path
    database_url: str
    bootstrap_key: str | None

    @classmethod
    def from_env(cls) -> Settings:
        directory = data_dir()
        return cls(
            address=listen_address("auth"),
            data_dir=directory,
            database_url=env("AQUEDUCT_DATABASE_URL", f"sqlite:///{directory / 'aqueduct.db'}"),
            bootstrap_key=env("AQUEDUCT_BOOTSTRAP_KEY", "") or None,
        )
