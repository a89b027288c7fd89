"""What every service does around each call, as one server interceptor: calls
are counted for metrics, domain errors become gRPC statuses, the caller's
request id reaches every log line (and, as configured, calls are traced,
callers authorized by identity, and new work refused while draining).

Each of those is a `CallWrapper`: it wraps a method's coroutine behaviour
once, the first time the method is called. `ServerInterceptor` composes the
wrappers of every method and caches the result, so a call pays one interceptor
hop and one dictionary lookup however many wrappers there are (grpc.aio runs
each interceptor as its own coroutine, a few microseconds of CPU each), plus
one await per wrapper that applies to the method. They wrap coroutine handlers,
the only kind our servicers write (a streaming handler writes with
`context.write`: an async generator is not closed when its call is cancelled);
generator handlers (health, reflection) pass through untouched.
"""

from __future__ import annotations

import inspect
import logging
import operator
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias

import grpc

from core import tracing
from core.errors import ServiceError
from core.request_id import REQUEST_ID
from core.status import to_grpc_status
from services.common.metrics import ServiceMetrics

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
# Generic in the stubs only, so quoted.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Behavior = Callable[[Any, Context], Awaitable[Any]]
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"
# Run as a call arrives, before its handler (e.g. to read its metadata).
OnCall = Callable[[grpc.HandlerCallDetails], None]

REQUEST_ID_KEY = "x-request-id"


class CallWrapper:
    """One thing done around a method's calls."""

    def wrap(self, behavior: Behavior, handler: Handler, method: str) -> Behavior:
        """`behavior` with this wrapper's work around it, or `behavior` itself."""
        return behavior

    def on_call(self, handler: Handler, method: str) -> OnCall | None:
        """What to run for each call of `method` as it arrives; None: nothing."""
        return None


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """`wrappers` (outermost first) applied to every method, composed once."""

    def __init__(self, wrappers: Sequence[CallWrapper]) -> None:
        self.wrappers = list(wrappers)
        # Keyed by method name; unknown methods are not kept (a caller could
        # otherwise grow it without bound).
        self._methods: dict[str, tuple[Handler, tuple[OnCall, ...]]] = {}

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler | None:
        found = self._methods.get(details.method)
        if found is None:
            handler = await continuation(details)
            if handler is None:
                return None
            found = self._methods[details.method] = self._compose(handler, details.method)
        handler, on_call = found
        for hook in on_call:
            hook(details)
        return handler

    def _compose(self, handler: Handler, method: str) -> tuple[Handler, tuple[OnCall, ...]]:
        hooks = (w.on_call(handler, method) for w in self.wrappers)
        on_call = tuple(hook for hook in hooks if hook is not None)
        kind = ("stream_" if handler.request_streaming else "unary_") + (
            "stream" if handler.response_streaming else "unary"
        )
        behavior = original = getattr(handler, kind)
        if not inspect.iscoroutinefunction(behavior):
            return handler, on_call
        for wrapper in reversed(self.wrappers):
            behavior = wrapper.wrap(behavior, handler, method)
        if behavior is original:
            return handler, on_call
        make = getattr(grpc, f"{kind}_rpc_method_handler")
        composed: Handler = make(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        return composed, on_call


class ErrorWrapper(CallWrapper):
    """A `ServiceError` ends the call with its status and a `google.rpc.ErrorInfo`
    detail; anything else unexpected ends it INTERNAL, the details only logged.
    Every call's end is logged at DEBUG (after the handler ran, so with the
    request id even where the servicer learns it from the message it reads)."""

    def wrap(self, behavior: Behavior, handler: Handler, method: str) -> Behavior:
        async def mapped(request: Any, context: Context) -> Any:
            refused = ""
            try:
                return await behavior(request, context)
            except ServiceError as error:
                refused = error.reason
                await context.abort_with_status(to_grpc_status(error))
            except grpc.aio.AbortError:
                raise  # the handler ended the call itself
            except Exception:
                refused = "INTERNAL"
                log.exception("call failed", extra={"method": method})
                await context.abort(grpc.StatusCode.INTERNAL, "Internal error.")
            finally:
                if log.isEnabledFor(logging.DEBUG):
                    extra = {"method": method, **({"refused": refused} if refused else {})}
                    log.debug("call ended", extra=extra)

        return mapped


class RequestIdWrapper(CallWrapper):
    """Sets `REQUEST_ID` for the call: from a request message's `request_id`
    field where it has one (inference: call metadata costs the edge ~100 us of
    CPU a call in grpc.aio), else from the `x-request-id` metadata."""

    def on_call(self, handler: Handler, method: str) -> OnCall | None:
        return None if field_reader(handler, "request_id") else _id_from_metadata

    def wrap(self, behavior: Behavior, handler: Handler, method: str) -> Behavior:
        read_id = field_reader(handler, "request_id")
        if read_id is None or handler.request_streaming:
            return behavior  # a streaming servicer sets it from the message it reads

        async def with_id(request: Any, context: Context) -> Any:
            REQUEST_ID.set(read_id(request))
            return await behavior(request, context)

        return with_id


def _id_from_metadata(details: grpc.HandlerCallDetails) -> None:
    # Each call runs in its own task, so a value set here is the call's.
    for key, value in details.invocation_metadata or ():
        if key == REQUEST_ID_KEY:
            REQUEST_ID.set(str(value))
            break


def field_reader(handler: Handler, name: str) -> Callable[[Any], Any] | None:
    """How to read the field `name` of the method's request message: its own, or
    that of a message it wraps (ChatCompletionRequest.request,
    SettleAndReserveQuotaRequest.reserve); None when it has neither."""
    message = getattr(handler.request_deserializer, "__self__", None)  # Message.FromString
    descriptor = getattr(message, "DESCRIPTOR", None)
    if descriptor is None:
        return None
    if name in descriptor.fields_by_name:
        return operator.attrgetter(name)
    for field in descriptor.fields:
        inner = field.message_type
        if inner is not None and not field.is_repeated and name in inner.fields_by_name:
            return operator.attrgetter(f"{field.name}.{name}")
    return None


class TracingWrapper(CallWrapper):
    """A server span for each call, child of the caller's trace context: the
    request message's `traceparent` field where it has one, else the call's
    `traceparent` metadata. Installed only when tracing is on. A call whose
    request is a stream (a prepared call) gets its span from the servicer,
    which reads the message."""

    def wrap(self, behavior: Behavior, handler: Handler, method: str) -> Behavior:
        if handler.request_streaming:
            return behavior
        name = method.lstrip("/")
        read_parent = field_reader(handler, tracing.TRACEPARENT)

        async def traced(request: Any, context: Context) -> Any:
            if read_parent is not None:
                parent = read_parent(request)
            else:
                found = dict(context.invocation_metadata() or ())
                parent = str(found.get(tracing.TRACEPARENT, ""))
            with tracing.remote(name, parent):
                return await behavior(request, context)

        return traced


class MetricsWrapper(CallWrapper):
    """Counts each call by method and final status code (outermost, so that it
    sees the status the error wrapper ended the call with)."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def wrap(self, behavior: Behavior, handler: Handler, method: str) -> Behavior:
        return self.metrics.measure(behavior, method)


def call_wrappers(metrics: ServiceMetrics) -> list[CallWrapper]:
    """In call order: counted, then the request id is set before errors are
    mapped and logged."""
    traced = [TracingWrapper()] if tracing.STATE.enabled else []
    return [MetricsWrapper(metrics), *traced, RequestIdWrapper(), ErrorWrapper()]
