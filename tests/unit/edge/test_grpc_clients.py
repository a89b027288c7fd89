from __future__ import annotations

import json

import pytest

from core.channels import channel_options
from core.config import ConfigError
from edge.grpc_clients import CHANNEL_OPTIONS, channel_target


def test_single_ip_and_dns_targets() -> None:
    assert channel_target(["127.0.0.1:50051"]) == "127.0.0.1:50051"
    assert channel_target(["auth.internal:50051"]) == "dns:///auth.internal:50051"


def test_replica_lists_use_ip_schemes() -> None:
    assert channel_target(["10.0.0.1:1", "10.0.0.2:1"]) == "ipv4:10.0.0.1:1,10.0.0.2:1"
    assert channel_target(["[::1]:1", "[::2]:1"]) == "ipv6:[::1]:1,[::2]:1"


def test_replica_list_of_names_is_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="IPv4 or all IPv6"):
        channel_target(["a.internal:1", "b.internal:1"])


def _service_config(addresses: list[str]) -> dict[str, object]:
    [raw] = [v for k, v in channel_options(addresses) if k == "grpc.service_config"]
    return json.loads(str(raw))  # type: ignore[no-any-return]


def test_one_address_is_called_whatever_its_health_says() -> None:
    assert channel_options(["127.0.0.1:1"]) is CHANNEL_OPTIONS
    assert "healthCheckConfig" not in _service_config(["127.0.0.1:1"])


def test_a_replica_list_calls_only_the_replicas_that_serve() -> None:
    config = _service_config(["127.0.0.1:1", "127.0.0.1:2"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]  # per call, not per channel
    assert config["healthCheckConfig"] == {"serviceName": ""}
    replica = dict(channel_options(["127.0.0.1:1", "127.0.0.1:2"]))
    assert {k: v for k, v in replica.items() if k != "grpc.service_config"} == {
        k: v for k, v in CHANNEL_OPTIONS if k != "grpc.service_config"
    }


def test_one_address_may_ask_for_health_checks() -> None:
    """As a forwarding inference worker does for the one that runs the local models."""
    assert channel_options(["127.0.0.1:1"], health_checked=True) is not CHANNEL_OPTIONS
    [raw] = [v for k, v in channel_options(["127.0.0.1:1"], True) if k == "grpc.service_config"]
    assert json.loads(str(raw))["healthCheckConfig"] == {"serviceName": ""}
