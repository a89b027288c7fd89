"""A local OTLP/gRPC trace receiver that counts spans and keeps nothing: what
the benchmark exports to when it measures the cost of tracing.

    python -m scripts.otlp_sink --port 4317
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as pb_grpc


class Sink(pb_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    async def Export(
        self, request: pb.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            self.spans += sum(len(scope.spans) for scope in resource.scope_spans)
        return pb.ExportTraceServiceResponse()


async def serve(port: int) -> None:
    server = grpc.aio.server()
    sink = Sink()
    pb_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        await server.wait_for_termination()
    finally:
        print(f"spans received: {sink.spans}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=4317)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
