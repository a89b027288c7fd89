"""Build and run the inference service."""

from __future__ import annotations

import asyncio
import logging
import signal

from aqueduct.inference.v1 import inference_pb2, inference_pb2_grpc

from core.channels import open_channel
from services.common.grpc_server import GrpcService, ServiceHost
from services.common.identity import EDGE, INFERENCE, Access
from services.inference.catalog import Catalog
from services.inference.config import Settings
from services.inference.forwarded import LocalModelsPeer
from services.inference.metering import Metering
from services.inference.metrics import InferenceCollector
from services.inference.registry import ModelRegistry
from services.inference.servicer import InferenceServicer

log = logging.getLogger(__name__)

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
# With mTLS the edge calls as itself, and so does an inference worker handing a
# request to the one that runs the local models (services.inference.forwarded);
# any other caller with a certificate from the CA presents an API key and is
# scoped to it (services.common.key_scope), and metered where it called.
ACCESS = Access({SERVICE_NAME: frozenset({EDGE, INFERENCE})}, keyed=frozenset({SERVICE_NAME}))


class InferenceServer(GrpcService):
    """Model backends behind a gRPC host; SERVING once every model is loaded.

    SIGHUP reloads the models file (see Catalog) without dropping requests."""

    name = "inference"

    def __init__(self, settings: Settings) -> None:
        self.host = ServiceHost(settings.address, [SERVICE_NAME], access=ACCESS)
        address = settings.local_models_address
        # Health-checked: while the owner loads or restarts, its models are
        # UNAVAILABLE at once here (so fallbacks apply), not sent to a model not loaded.
        self.peer = (
            LocalModelsPeer(address, open_channel([address], self.host.tls, health_checked=True))
            if address
            else None
        )
        self.catalog = Catalog(settings, self.peer)
        verifier = self.host.verifier  # set when internal callers may present keys
        metering = (
            Metering(verifier.channel, settings.reserve_output_tokens)
            if verifier is not None
            else None
        )
        servicer = InferenceServicer(self.catalog, settings.idle_call_s, metering)
        if metering is not None:
            self.host.on_stopped.append(metering.drain)
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, self.host.server)
        self.host.on_shutdown.append(servicer.close_idle_calls)
        self.servicer = servicer
        self.host.metrics.add(InferenceCollector(lambda: self.catalog.current))
        self._reloads: set[asyncio.Task[bool]] = set()

    @property
    def registry(self) -> ModelRegistry:
        """The models served now (the catalog's current snapshot)."""
        return self.catalog.current

    async def ready(self) -> None:
        await self.catalog.start()

    async def close(self) -> None:
        await self.catalog.close()
        if self.peer is not None:
            await self.peer.close()

    async def reload(self) -> bool:
        return await self.catalog.reload()

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading the models file")
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def run(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
        await super().run()
