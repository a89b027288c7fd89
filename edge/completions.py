"""POST /v1/completions: authenticate, validate, reserve quota, stream from
inference, answer, settle — the chat handler's steps for text completions."""

from __future__ import annotations

import secrets
import time

from aqueduct.inference.v1 import inference_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from edge.auth import Authenticator, require_model_access
from edge.chat import (
    INTERRUPTED,
    Call,
    collect,
    finish_request,
    read_message,
    render,
    sse_events,
)
from edge.chat_protocol import Completion
from edge.completions_protocol import (
    CompletionWriter,
    completion_json,
    parse_completion_request,
)
from edge.errors import ApiError
from edge.http import EventStream, json_response, read_json, request_id, until_disconnect
from edge.limits import Limiter, Usage, estimate_completion_input_tokens
from edge.prepared_calls import GenerationCalls

CompletionCalls = GenerationCalls[pb.StreamCompletionRequest, pb.StreamCompletionResponse]


class CompletionsHandler:
    def __init__(
        self,
        authenticator: Authenticator,
        limiter: Limiter,
        calls: CompletionCalls,
        max_body_bytes: int,
    ) -> None:
        self.authenticator = authenticator
        self.limiter = limiter
        self.calls = calls
        self.max_body_bytes = max_body_bytes

    async def __call__(self, request: Request) -> Response | EventStream:
        rid = request_id(request)
        principal = await self.authenticator.authenticate(request.headers, rid)
        parsed = parse_completion_request(await read_json(request, self.max_body_bytes))
        message = parsed.request
        require_model_access(principal, message.model, message.fallback_models)
        usage = Usage(
            rid,
            message.model,
            parsed.stream,
            message.user,
            input_tokens=estimate_completion_input_tokens(message),
        )
        # Every candidate of every prompt may run to max_tokens.
        candidates = max(message.best_of, message.sampling.n, 1) * len(message.prompts)
        admission = await self.limiter.reserve(
            principal, usage.input_tokens, message.sampling.max_tokens * candidates, rid
        )
        headers = {"x-request-id": rid, **admission.headers}
        meta = Completion("cmpl-" + secrets.token_urlsafe(18), int(time.time()), message.model)
        message.request_id = rid
        call: Call = await self.calls.start(message)
        logprobs = parsed.logprobs is not None
        try:
            if parsed.stream:
                writer = CompletionWriter(meta, parsed.include_usage, logprobs)
                # Wait for the first message before answering 200, so errors that
                # come before any text (unknown model, overload) keep their status.
                first = render(writer, await read_message(call, usage))
                return EventStream(
                    first,
                    sse_events(call, writer, usage),
                    headers,
                    on_close=lambda: finish_request(self.limiter, admission, usage, None, call),
                )
            choices, summary = await until_disconnect(request.receive, collect(call, meta, usage))
            body = completion_json(meta, choices, summary, logprobs)
        except ApiError as error:
            finish_request(self.limiter, admission, usage, error, call)
            error.headers.update(headers)
            raise
        except BaseException:  # cancelled, or a bug: the call and the quota still end
            finish_request(self.limiter, admission, usage, INTERRUPTED, call)
            raise
        finish_request(self.limiter, admission, usage, None, call)
        return json_response(body, headers=headers)
