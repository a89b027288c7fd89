"""Files service settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.config import data_dir, env, env_float, env_int, listen_address

MB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    address: str
    database_url: str
    # Where the local blob store keeps file bytes.
    storage_dir: Path
    # Largest file one upload may store.
    max_file_bytes: int = 512 * MB
    # Bytes one team may keep stored in total; 0 means unlimited.
    team_quota_bytes: int = 10 * 1024 * MB
    # Largest file ExtractFileContent reads (stored or inline).
    max_extract_bytes: int = 64 * MB
    # Wall-clock budget of one extraction; beyond it the worker is killed.
    extract_timeout_s: float = 30.0
    # Extractions running at once (each in its own process).
    extract_workers: int = 2
    # An extraction worker idle this long exits (the next job starts one).
    extract_idle_s: float = 60.0
    # How often expired files are purged.
    purge_interval_s: float = 60.0
    # How long a stored Responses API answer is kept (OpenAI keeps them 30 days).
    responses_ttl_s: int = 30 * 24 * 3600
    # Largest stored answer: response, input items and conversation together.
    max_response_bytes: int = 2 * MB

    @classmethod
    def from_env(cls) -> Settings:
        directory = data_dir()
        return cls(
            address=listen_address("files"),
            database_url=env("AQUEDUCT_DATABASE_URL", f"sqlite:///{directory / 'aqueduct.db'}"),
            storage_dir=Path(env("AQUEDUCT_FILES_DIR", str(directory / "files"))).resolve(),
            max_file_bytes=env_int("AQUEDUCT_MAX_FILE_MB", 512, minimum=1) * MB,
            team_quota_bytes=env_int("AQUEDUCT_TEAM_FILES_QUOTA_MB", 10 * 1024) * MB,
            max_extract_bytes=env_int("AQUEDUCT_MAX_EXTRACT_MB", 64, minimum=1) * MB,
            extract_timeout_s=env_float("AQUEDUCT_EXTRACT_TIMEOUT_S", 30.0, minimum=0.1),
            extract_workers=env_int("AQUEDUCT_EXTRACT_WORKERS", 2, minimum=1),
            extract_idle_s=env_float("AQUEDUCT_EXTRACT_IDLE_S", 60.0, minimum=0.1),
            purge_interval_s=env_float("AQUEDUCT_FILES_PURGE_INTERVAL_S", 60.0, minimum=0.1),
            responses_ttl_s=env_int("AQUEDUCT_RESPONSES_TTL_S", 30 * 24 * 3600, minimum=60),
            max_response_bytes=env_int("AQUEDUCT_MAX_STORED_RESPONSE_MB", 2, minimum=1) * MB,
        )
