from __future__ import annotations

import pytest

from core.config import ConfigError
from edge.grpc_clients import channel_target


def test_single_ip_and_dns_targets() -> None:
    assert channel_target(["127.0.0.1:50051"]) == "127.0.0.1:50051"
    assert channel_target(["auth.internal:50051"]) == "dns:///auth.internal:50051"


def test_replica_lists_use_ip_schemes() -> None:
    assert channel_target(["10.0.0.1:1", "10.0.0.2:1"]) == "ipv4:10.0.0.1:1,10.0.0.2:1"
    assert channel_target(["[::1]:1", "[::2]:1"]) == "ipv6:[::1]:1,[::2]:1"


def test_replica_list_of_names_is_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="IPv4 or all IPv6"):
        channel_target(["a.internal:1", "b.internal:1"])
