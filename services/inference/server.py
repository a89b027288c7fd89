"""Build and run the inference service."""

from __future__ import annotations

from aqueduct.inference.v1 import inference_pb2, inference_pb2_grpc

from services.common.grpc_server import GrpcService, ServiceHost
from services.inference import models_file
from services.inference.config import Settings
from services.inference.registry import build_registry
from services.inference.servicer import InferenceServicer

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


class InferenceServer(GrpcService):
    """Model backends behind a gRPC host; SERVING once every model is loaded."""

    name = "inference"

    def __init__(self, settings: Settings) -> None:
        self.registry = build_registry(models_file.load(settings.models_config), settings)
        self.host = ServiceHost(settings.address, [SERVICE_NAME])
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(self.registry), self.host.server
        )

    async def ready(self) -> None:
        await self.registry.start()

    async def close(self) -> None:
        await self.registry.close()
