"""Inference service settings, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.config import ConfigError, addresses_in, env, env_float, env_int, listen_address


@dataclass(frozen=True)
class Settings:
    address: str
    models_config: Path | None
    local_n_ctx: int = 8192
    local_threads: int = 2
    local_max_waiting: int = 16
    local_max_messages: int = 2048  # messages of a chat, prompts of a completion
    local_max_prompt_chars: int | None = None  # None: 8 per token of local_n_ctx
    embed_threads: int = 2
    upstream_max_connections: int = 100  # per upstream replica
    upstream_pool_wait_s: float = 5.0  # for a free connection, then 503
    upstream_eject_after: int = 3  # consecutive failures that eject a replica
    upstream_cooldown_s: float = 10.0  # how long an ejected replica rests before a probe
    # How long a prepared call may wait for its request. Clients use theirs for
    # much less (the edge: edge/prepared_calls.py); this ends forgotten ones.
    idle_call_s: float = 300.0
    # Output tokens reserved for a key-bearing internal caller's request without
    # max_tokens (the edge's AQUEDUCT_RESERVE_OUTPUT_TOKENS, for the same request).
    reserve_output_tokens: int = 512
    # Where the worker that runs the local models listens, when this worker
    # is not it (AQUEDUCT_LOCAL_MODELS_ADDR); "": this process runs them.
    local_models_address: str = ""

    @classmethod
    def from_env(cls) -> Settings:
        path = env("AQUEDUCT_MODELS_CONFIG", "")
        return cls(
            address=listen_address("inference"),
            models_config=Path(path) if path else None,
            local_n_ctx=env_int("AQUEDUCT_LOCAL_N_CTX", 8192, minimum=256),
            local_threads=env_int("AQUEDUCT_LOCAL_THREADS", min(4, os.cpu_count() or 1), minimum=1),
            local_max_waiting=env_int("AQUEDUCT_LOCAL_MAX_WAITING", 16, minimum=0),
            local_max_messages=env_int("AQUEDUCT_LOCAL_MAX_MESSAGES", 2048, minimum=1),
            local_max_prompt_chars=(
                env_int("AQUEDUCT_LOCAL_MAX_PROMPT_CHARS", 0, minimum=1)
                if env("AQUEDUCT_LOCAL_MAX_PROMPT_CHARS", "")
                else None
            ),
            embed_threads=env_int("AQUEDUCT_EMBED_THREADS", min(4, os.cpu_count() or 1), minimum=1),
            upstream_max_connections=env_int("AQUEDUCT_UPSTREAM_MAX_CONNECTIONS", 100, minimum=1),
            upstream_pool_wait_s=env_float("AQUEDUCT_UPSTREAM_POOL_WAIT_S", 5.0, minimum=0.0),
            upstream_eject_after=env_int("AQUEDUCT_UPSTREAM_EJECT_AFTER", 3, minimum=1),
            upstream_cooldown_s=env_float("AQUEDUCT_UPSTREAM_COOLDOWN_S", 10.0, minimum=0.0),
            reserve_output_tokens=env_int("AQUEDUCT_RESERVE_OUTPUT_TOKENS", 512, minimum=1),
            local_models_address=_one_address("AQUEDUCT_LOCAL_MODELS_ADDR"),
        )


def _one_address(name: str) -> str:
    addresses = addresses_in(name, env(name, ""))
    if len(addresses) > 1:
        raise ConfigError(f"{name}: one host:port, not a list")
    return addresses[0] if addresses else ""
