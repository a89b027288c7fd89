"""Edge settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import env, env_float, env_int, service_addresses


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    auth_addresses: tuple[str, ...]
    files_addresses: tuple[str, ...]
    inference_addresses: tuple[str, ...]
    max_body_bytes: int
    # How long a verified key is trusted without asking auth again. Revocation
    # must reach every edge within 1 s, so this stays at or below 1 s.
    key_cache_ttl_s: float = 1.0
    # Output tokens reserved against output_tpm when a request sets no max_tokens.
    reserve_output_tokens: int = 512
    # Decoded size of one file part in a chat request / of all of them (CONTRACT.md).
    max_file_part_bytes: int = 10 * 1024 * 1024
    max_file_parts_total_bytes: int = 32 * 1024 * 1024
    # GET /metrics on its own port (so a public edge need not expose it); None:
    # on the edge's own port.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            host=env("AQUEDUCT_HTTP_HOST", "127.0.0.1"),
            port=env_int("AQUEDUCT_HTTP_PORT", 8000),
            auth_addresses=tuple(service_addresses("auth")),
            files_addresses=tuple(service_addresses("files")),
            inference_addresses=tuple(service_addresses("inference")),
            max_body_bytes=env_int("AQUEDUCT_MAX_BODY_MB", 64, minimum=1) * 1024 * 1024,
            key_cache_ttl_s=min(env_float("AQUEDUCT_KEY_CACHE_TTL_S", 1.0), 1.0),
            reserve_output_tokens=env_int("AQUEDUCT_RESERVE_OUTPUT_TOKENS", 512, minimum=1),
            max_file_part_bytes=env_int("AQUEDUCT_MAX_FILE_PART_MB", 10, minimum=1) * 1024 * 1024,
            max_file_parts_total_bytes=env_int("AQUEDUCT_MAX_FILE_PARTS_TOTAL_MB", 32, minimum=1)
            * 1024
            * 1024,
            metrics_port=env_int("AQUEDUCT_METRICS_PORT", 0, minimum=0) or None,
            metrics_host=env("AQUEDUCT_METRICS_HOST", env("AQUEDUCT_HTTP_HOST", "127.0.0.1")),
        )
