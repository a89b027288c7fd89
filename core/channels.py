"""Long-lived gRPC channels to the services: one per service and process, shared by every call."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

import grpc

from core.config import ConfigError
from core.tls import TlsFiles

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
# Over a replica list, each replica's own health decides whether it gets calls
# (gRPC client-side health checking: one Watch stream per replica): one still
# loading or draining (NOT_SERVING) is skipped while the others serve.
REPLICA_CHANNEL_OPTIONS: list[tuple[str, object]] = [
    *(o for o in CHANNEL_OPTIONS if o[0] != "grpc.service_config"),
    (
        "grpc.service_config",
        json.dumps(
            {
                "loadBalancingConfig": [{"round_robin": {}}],
                "healthCheckConfig": {"serviceName": ""},
            }
        ),
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


def channel_options(
    addresses: Sequence[str], health_checked: bool = False
) -> list[tuple[str, object]]:
    """One address: every call goes to it, whatever its health says (it answers
    for itself), unless `health_checked`; a list: to the replicas that report
    SERVING (none serving: UNAVAILABLE at once)."""
    return REPLICA_CHANNEL_OPTIONS if len(addresses) > 1 or health_checked else CHANNEL_OPTIONS


def open_channel(
    addresses: Sequence[str], tls: TlsFiles | None = None, health_checked: bool = False
) -> grpc.aio.Channel:
    """Plaintext, or mutual TLS with this process's certificate when `tls` is set."""
    target = channel_target(addresses)
    options = channel_options(addresses, health_checked)
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    hosts = {_host(a) for a in addresses}
    if len(addresses) > 1 and len(hosts) == 1:
        # Replicas on one host (`make run`'s inference workers): each certificate
        # is checked for that host. Without this the name checked would be the
        # whole list, which no certificate names.
        options = [*options, ("grpc.ssl_target_name_override", hosts.pop())]
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=options)
