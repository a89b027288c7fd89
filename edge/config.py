"""Edge settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import env, env_float, env_int, service_addresses


@dataclass(frozen=True)
class HttpLimits:
    """What one HTTP connection may cost the edge (edge/http_server.py)."""

    max_header_bytes: int = 64 * 1024  # request line and headers: over -> 431
    max_headers: int = 100  # over -> 431
    header_timeout_s: float = 10.0  # a head not complete by then -> 408
    body_timeout_s: float = 30.0  # no body byte for this long -> 408
    idle_timeout_s: int = 75  # keep-alive: an idle connection is closed after this

    @classmethod
    def from_env(cls) -> HttpLimits:
        return cls(
            max_header_bytes=env_int("AQUEDUCT_HTTP_MAX_HEADER_KB", 64, minimum=1) * 1024,
            max_headers=env_int("AQUEDUCT_HTTP_MAX_HEADERS", 100, minimum=1),
            header_timeout_s=env_float("AQUEDUCT_HTTP_HEADER_TIMEOUT_S", 10.0, minimum=0.1),
            body_timeout_s=env_float("AQUEDUCT_HTTP_BODY_TIMEOUT_S", 30.0, minimum=0.1),
            idle_timeout_s=env_int("AQUEDUCT_HTTP_IDLE_TIMEOUT_S", 75, minimum=1),
        )


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
    http: HttpLimits = HttpLimits()

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
            http=HttpLimits.from_env(),
        )
