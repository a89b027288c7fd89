"""OpenTelemetry tracing across the hops, on only when an OTLP endpoint is set.

`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns it
on; the exporter (OTLP over gRPC) reads the other standard `OTEL_*` variables
itself. Off, every helper here returns at its first line: no span objects, no
extra call metadata, no context switches, so tracing costs nothing measurable.

The W3C `traceparent` goes from the client's HTTP request (or a span started at
the edge) to auth and files in call metadata, to inference inside the request
message (a prepared call's metadata is sent before its request exists), and
from inference to the upstream in the HTTP request's header.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT = "traceparent"
_PROPAGATOR = TraceContextTextMapPropagator()


class _Tracing:
    """Process-wide: whether spans are made, and by which tracer."""

    enabled = False
    tracer: Tracer = trace.NoOpTracer()


STATE = _Tracing()


def configure(service: str) -> None:
    """Turn tracing on for this process when an OTLP endpoint is configured."""
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return
    # Imported only when used: the SDK and exporter are not on the hot path's import cost.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or f"aqueduct-{service}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use(provider)


def use(provider: trace.TracerProvider) -> None:
    """Make spans with `provider` from now on (tests pass an in-memory one)."""
    STATE.tracer = provider.get_tracer("aqueduct")
    STATE.enabled = True


def stop() -> None:
    """Make no spans from now on (tests)."""
    STATE.tracer = trace.NoOpTracer()
    STATE.enabled = False


def context_of(traceparent: str | None) -> otel_context.Context | None:
    """The remote parent a `traceparent` value names (None: start a new trace)."""
    if not traceparent:
        return None
    return _PROPAGATOR.extract({TRACEPARENT: traceparent})


def start(
    name: str,
    parent: str | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Span | None:
    """A span the caller ends (it outlives the block that starts it: a stream)."""
    if not STATE.enabled:
        return None
    return STATE.tracer.start_span(name, context_of(parent), kind, attributes)


class _NoSpan:
    """The block's context manager when tracing is off: one shared object, no work."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None


NO_SPAN = _NoSpan()


def current(span: Span | None) -> AbstractContextManager[Any]:
    """Make `span` the parent of spans started inside the block (not ending it)."""
    if span is None:
        return NO_SPAN
    return trace.use_span(span, end_on_exit=False)


def span(
    name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any
) -> AbstractContextManager[Any]:
    """A span around the block, child of the current one; an exception escaping
    the block marks it failed."""
    if not STATE.enabled:
        return NO_SPAN
    return STATE.tracer.start_as_current_span(name, kind=kind, attributes=attributes)


def remote(name: str, traceparent: str | None) -> AbstractContextManager[Any]:
    """A server span around the block, child of the caller's trace context."""
    if not STATE.enabled:
        return NO_SPAN
    return STATE.tracer.start_as_current_span(
        name, context_of(traceparent), SpanKind.SERVER, attributes={"rpc.system": "grpc"}
    )


def end(span: Span | None, error: str | None = None, **attributes: Any) -> None:
    if span is None:
        return
    if attributes:
        span.set_attributes(attributes)
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def traceparent(span: Span | None = None) -> str:
    """`span` (else the current span) as a `traceparent` value ("" when off)."""
    if not STATE.enabled:
        return ""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span) if span is not None else None)
    return carrier.get(TRACEPARENT, "")


def call_metadata(request_id: str) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata: the request id, and the trace context when tracing."""
    if STATE.enabled and (parent := traceparent()):
        return (("x-request-id", request_id), (TRACEPARENT, parent))
    return (("x-request-id", request_id),)
