"""Edge settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import env, env_float, env_int, service_addresses
from core.tls import TlsFiles, tls_from_env


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
class BatchSettings:
    """The batch worker each edge runs (edge/batch_worker.py)."""

    enabled: bool = True
    concurrency: int = 4  # lines of one batch in flight at once
    # A batch line starts only while fewer live requests than this are in flight.
    live_threshold: int = 8
    lease_s: float = 60.0  # a dead edge's batch is taken over after this
    poll_s: float = 1.0  # how often an idle worker looks for a batch
    # At shutdown, running lines get this long to end (within `make run`'s 20 s for the edge).
    stop_grace_s: float = 5.0

    @classmethod
    def from_env(cls) -> BatchSettings:
        return cls(
            enabled=env("AQUEDUCT_BATCH_WORKER", "on").lower() not in ("off", "0", "false"),
            concurrency=env_int("AQUEDUCT_BATCH_CONCURRENCY", 4, minimum=1),
            live_threshold=env_int("AQUEDUCT_BATCH_LIVE_THRESHOLD", 8, minimum=1),
            lease_s=env_float("AQUEDUCT_BATCH_LEASE_S", 60.0, minimum=1.0),
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
    # Keys with large limits are admitted from leases held here (edge/leases.py).
    limit_leases: bool = True
    # Decoded size of one file part in a chat request / of all of them (CONTRACT.md).
    max_file_part_bytes: int = 10 * 1024 * 1024
    max_file_parts_total_bytes: int = 32 * 1024 * 1024
    # GET /metrics on its own port (so a public edge need not expose it); None:
    # on the edge's own port.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    http: HttpLimits = HttpLimits()
    # mTLS to the services (AQUEDUCT_TLS_*; the edge's certificate CN is `edge`);
    # None: plaintext.
    tls: TlsFiles | None = None
    batch: BatchSettings = BatchSettings()
    # `make run`'s edge worker number (1..n, AQUEDUCT_EDGE_WORKER) when several
    # share the HTTP port; 0: the only edge, bound the ordinary way.
    worker: int = 0

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
            limit_leases=env("AQUEDUCT_LIMIT_LEASES", "on").lower() not in ("off", "0", "false"),
            max_file_part_bytes=env_int("AQUEDUCT_MAX_FILE_PART_MB", 10, minimum=1) * 1024 * 1024,
            max_file_parts_total_bytes=env_int("AQUEDUCT_MAX_FILE_PARTS_TOTAL_MB", 32, minimum=1)
            * 1024
            * 1024,
            metrics_port=env_int("AQUEDUCT_METRICS_PORT", 0, minimum=0) or None,
            metrics_host=env("AQUEDUCT_METRICS_HOST", env("AQUEDUCT_HTTP_HOST", "127.0.0.1")),
            http=HttpLimits.from_env(),
            tls=tls_from_env(),
            batch=BatchSettings.from_env(),
            worker=env_int("AQUEDUCT_EDGE_WORKER", 0),
        )
