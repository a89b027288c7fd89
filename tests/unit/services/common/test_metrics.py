"""A service's metrics endpoint: Prometheus text on GET /metrics, nothing else."""

from __future__ import annotations

import asyncio

import pytest

from core.config import ConfigError
from services.common.metrics import ServiceMetrics, metrics_address


async def fetch(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    writer.write_eof()
    answer = await reader.read()
    writer.close()
    return answer


def test_serves_metrics_and_refreshes_before_each_scrape() -> None:
    async def scenario() -> None:
        metrics = ServiceMetrics()
        refreshed: list[int] = []

        async def refresh() -> None:
            refreshed.append(1)

        metrics.before_scrape.append(refresh)
        port = await metrics.serve("127.0.0.1", 0)
        try:
            ok = await fetch(port, b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200") and b"grpc_server_handled_total" in ok
            missing = await fetch(port, b"GET /other HTTP/1.1\r\nhost: x\r\n\r\n")
            assert missing.startswith(b"HTTP/1.1 404")
            assert await fetch(port, b"garbage") == b""  # closed, no answer
            assert refreshed == [1]
        finally:
            await metrics.close()

    asyncio.run(scenario())


def test_metrics_address_is_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AQUEDUCT_FILES_METRICS_ADDR", raising=False)
    assert metrics_address("files") is None
    monkeypatch.setenv("AQUEDUCT_FILES_METRICS_ADDR", "127.0.0.1:9102")
    assert metrics_address("files") == ("127.0.0.1", 9102)
    monkeypatch.setenv("AQUEDUCT_FILES_METRICS_ADDR", "9102")
    with pytest.raises(ConfigError, match="AQUEDUCT_FILES_METRICS_ADDR"):
        metrics_address("files")
