"""Run the real services and a real uvicorn edge on 127.0.0.1 ephemeral ports.

Everything runs on one uvloop event loop in a background thread, so tests drive
it over real sockets with ordinary synchronous clients (the openai SDK, grpc).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import openai
import uvicorn
import uvloop

from edge.app import Gateway, create_app
from edge.config import Settings as EdgeSettings
from edge.http_server import uvicorn_config
from services.auth.config import Settings as AuthSettings
from services.auth.server import AuthServer
from services.files.config import Settings as FilesSettings
from services.files.server import FilesServer
from services.inference.config import Settings as InferenceSettings
from services.inference.server import InferenceServer

T = TypeVar("T")
ADMIN_KEY = "sk-aq-test-admin-0123456789abcdefghijklmnopqrstuv"


class LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Stack:
    data_dir: Path
    models_config: Path | None = None
    # An already running files service (e.g. a subprocess) instead of an in-process one.
    files_address: str | None = None
    # Shared state for several auth replicas (and the files service's metadata):
    # a database URL and Redis.
    database_url: str | None = None
    redis_url: str | None = None
    auth_replicas: int = 1
    inference_overrides: dict[str, Any] = field(default_factory=dict)
    edge_overrides: dict[str, Any] = field(default_factory=dict)  # EdgeSettings fields
    auth_extra: list[AuthServer] = field(default_factory=list)
    auth_ports: list[int] = field(default_factory=list)
    loop: LoopThread = field(default_factory=LoopThread)
    auth: AuthServer | None = None
    files: FilesServer | None = None
    inference: InferenceServer | None = None
    edge: uvicorn.Server | None = None
    edge_task: asyncio.Task[None] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)  # each service's /metrics

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['edge']}"

    def sdk(self, key: str = ADMIN_KEY, timeout: float = 60) -> openai.OpenAI:
        """The official client against this stack's edge, without retries."""
        return openai.OpenAI(
            base_url=f"{self.base_url}/v1", api_key=key, max_retries=0, timeout=timeout
        )

    @property
    def gateway(self) -> Gateway:
        """The running edge's shared state (channels, caches, prepared calls)."""
        assert self.edge is not None
        gateway: Gateway = self.edge.config.app.app.state.gateway
        return gateway

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def start(self) -> Stack:
        self.loop.run(self._start(), timeout=120)
        return self

    async def _start(self) -> None:
        auth_settings = AuthSettings(
            address="127.0.0.1:0",
            data_dir=self.data_dir,
            database_url=self.database_url or f"sqlite:///{self.data_dir / 'aqueduct.db'}",
            bootstrap_key=ADMIN_KEY,
            redis_url=self.redis_url,
        )
        self.auth = AuthServer(auth_settings)
        self.auth_extra = [AuthServer(auth_settings) for _ in range(self.auth_replicas - 1)]
        if self.files_address is None:
            self.files = FilesServer(
                FilesSettings(
                    address="127.0.0.1:0",
                    database_url=self.database_url or f"sqlite:///{self.data_dir / 'aqueduct.db'}",
                    storage_dir=self.data_dir / "files",
                    purge_interval_s=0.5,
                )
            )
        self.inference = InferenceServer(
            InferenceSettings(
                address="127.0.0.1:0",
                models_config=self.models_config,
                local_threads=2,
                **self.inference_overrides,
            )
        )
        metrics = ("127.0.0.1", 0)
        self.ports["auth"] = await self.auth.start(metrics)
        self.auth_ports = [self.ports["auth"]] + [await a.start() for a in self.auth_extra]
        if self.files is not None:
            self.ports["files"] = await self.files.start(metrics)
        else:
            assert self.files_address is not None
            self.ports["files"] = int(self.files_address.rpartition(":")[2])
        self.ports["inference"] = await self.inference.start(metrics)
        for name, server in (
            ("auth", self.auth),
            ("files", self.files),
            ("inference", self.inference),
        ):
            if server is not None:
                self.metrics_ports[name] = server.host.metrics.port
        await self.start_edge(**self.edge_overrides)

    async def start_edge(self, **overrides: Any) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        self.ports["edge"] = listener.getsockname()[1]
        settings = EdgeSettings(
            **{
                "host": "127.0.0.1",
                "port": self.ports["edge"],
                "auth_addresses": tuple(f"127.0.0.1:{p}" for p in self.auth_ports),
                "files_addresses": (self.address("files"),),
                "inference_addresses": (self.address("inference"),),
                "max_body_bytes": 1024 * 1024,
                **overrides,
            }
        )
        config = uvicorn_config(create_app(settings), settings.http, lifespan="on")
        self.edge = uvicorn.Server(config)
        self.edge_task = asyncio.ensure_future(self.edge.serve(sockets=[listener]))
        while not self.edge.started:
            if self.edge_task.done():
                self.edge_task.result()
                raise RuntimeError("the edge failed to start; see the log above")
            await asyncio.sleep(0.01)

    async def stop_edge(self) -> None:
        """Stop the edge as SIGTERM would (its lifespan closes the gateway)."""
        assert self.edge is not None and self.edge_task is not None
        self.edge.should_exit = True
        await self.edge_task
        self.edge = self.edge_task = None

    def stop(self) -> None:
        self.loop.run(self._stop(), timeout=60)
        self.loop.close()

    async def _stop(self) -> None:
        if self.edge is not None and self.edge_task is not None:
            self.edge.should_exit = True
            await self.edge_task
        for server in (self.inference, self.files, self.auth, *self.auth_extra):
            if server is not None:
                await server.stop(0.5)
