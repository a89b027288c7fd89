"""Reading settings from the environment: once, at start-up, failing fast."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ADDRESSES = {
    "auth": "127.0.0.1:50051",
    "files": "127.0.0.1:50052",
    "inference": "127.0.0.1:50053",
}

# Where `make run` serves each service's Prometheus metrics
# (AQUEDUCT_<SERVICE>_METRICS_ADDR; unset means off).
DEFAULT_METRICS_ADDRESSES = {
    "auth": "127.0.0.1:9101",
    "files": "127.0.0.1:9102",
    "inference": "127.0.0.1:9103",
}


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


def env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = env(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum {minimum}")
    return value


def env_float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = env(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum {minimum}")
    return value


def data_dir() -> Path:
    return Path(env("AQUEDUCT_DATA_DIR", "./var")).resolve()


def service_addresses(service: str) -> list[str]:
    """`AQUEDUCT_<SERVICE>_ADDR`: one `host:port`, or a comma-separated replica list."""
    name = f"AQUEDUCT_{service.upper()}_ADDR"
    return addresses_in(name, env(name, DEFAULT_ADDRESSES[service]))


def addresses_in(name: str, raw: str) -> list[str]:
    """Variable `name`'s comma-separated `host:port` list."""
    addresses = [part.strip() for part in raw.split(",") if part.strip()]
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"{name}: {address!r} is not host:port")
    return addresses


def listen_address(service: str) -> str:
    """Where a service process listens: the first address of its variable."""
    return service_addresses(service)[0]
