"""`python -m edge`: serve the OpenAI-compatible HTTP API."""

from __future__ import annotations

import core.grpc_io  # noqa: F401  (first: gRPC reads its I/O settings at import)

# isort: split
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn
import uvloop

from core import logs, tracing
from core.config import ConfigError, env
from edge.app import create_app
from edge.config import Settings
from edge.http_server import uvicorn_config

log = logging.getLogger("edge")
STARTUP_FAILURE = 3  # uvicorn's exit code when it cannot bind its port


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


def shared_port(host: str, port: int) -> socket.socket:
    """The HTTP port bound with SO_REUSEPORT, for `make run`'s edge workers: each
    binds its own socket to the same port and the kernel spreads new connections
    over the workers listening. Only bound here: uvicorn listens once the app has
    started, so no connection is handed to a worker still starting. Linux lets
    only processes of the same user join the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(False)
    return sock


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
    sockets = None
    if settings.worker:
        try:
            sockets = [shared_port(settings.host, settings.port)]
        except OSError as error:
            log.error("cannot bind %s:%d: %s", settings.host, settings.port, error)
            sys.exit(STARTUP_FAILURE)
        log.info(
            "edge worker %d (pid %d) shares %s:%d",
            settings.worker,
            os.getpid(),
            settings.host,
            settings.port,
            extra={"worker": settings.worker},
        )
    uvloop.run(_Server(config).serve(sockets=sockets))


if __name__ == "__main__":
    main()
