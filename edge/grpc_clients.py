"""One long-lived gRPC channel per service, shared by every request."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

import grpc

from services.common.config import ConfigError

CHANNEL_OPTIONS: list[tuple[str, object]] = [
    ("grpc.max_receive_message_length", 80 * 1024 * 1024),
    ("grpc.max_send_message_length", 80 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.enable_retries", 0),
    # After an outage of any length, try again at least every second (grpc's
    # default backoff grows to 120 s: a service back for 15 s could still get 503s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    (
        "grpc.service_config",
        json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}),
    ),
]


def channel_target(addresses: Sequence[str]) -> str:
    """A gRPC target for one address or a list of replicas (round-robin).

    One address may be a DNS name (its A records are balanced over); a list
    of replicas must be IP literals, which gRPC's `ipv4:`/`ipv6:` schemes take.
    """
    if len(addresses) == 1:
        return f"dns:///{addresses[0]}" if not _is_ip(addresses[0]) else addresses[0]
    families = {ipaddress.ip_address(_host(a)).version if _is_ip(a) else 0 for a in addresses}
    if families == {4}:
        return "ipv4:" + ",".join(addresses)
    if families == {6}:
        return "ipv6:" + ",".join(addresses)
    raise ConfigError(
        f"replica list {','.join(addresses)} must be all IPv4 or all IPv6 literals; "
        "for DNS names give one name that resolves to every replica"
    )


def _host(address: str) -> str:
    return address.rpartition(":")[0].strip("[]")


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(_host(address))
    except ValueError:
        return False
    return True


def open_channel(addresses: Sequence[str]) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(channel_target(addresses), options=CHANNEL_OPTIONS)
