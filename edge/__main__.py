"""`python -m edge`: serve the OpenAI-compatible HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Iterator

import uvicorn
import uvloop

from core import logs, tracing
from core.config import ConfigError, env
from edge.app import create_app
from edge.config import Settings
from edge.http_server import uvicorn_config


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process
    would end "killed by signal"; a clean stop should exit 0 like the services."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def main() -> None:
    logs.setup("edge", env("AQUEDUCT_LOG_LEVEL", "INFO"))
    tracing.configure("edge")
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"edge: configuration error: {error}", file=sys.stderr)
        sys.exit(2)
    config = uvicorn_config(
        create_app(settings),
        settings.http,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        proxy_headers=False,  # no X-Forwarded-* rewriting: nothing here reads client addresses
        timeout_graceful_shutdown=5,
    )
    uvloop.run(_Server(config).serve())


if __name__ == "__main__":
    main()
