"""POST /v1/responses: the Responses route of the generation pipeline.

Translated to the chat generation (edge/responses_request.py), answered as
OpenAI `response` objects and semantic stream events (edge/responses_render.py).
"""

from __future__ import annotations

import orjson
from aqueduct.inference.v1 import inference_pb2 as pb

from core.estimates import chat_output_tokens, estimate_input_tokens
from edge.pipeline import Estimate, Writer
from edge.rendering import ChoiceText, Completion
from edge.response_store import ResponseStore
from edge.responses_render import ResponsesWriter, response_body
from edge.responses_request import ResponsesCall, parse_responses_request


class ResponsesRoute:
    id_prefix = "resp_"
    name = "/v1/responses"
    operation = "chat"

    def __init__(self, store: ResponseStore) -> None:
        self.store = store

    async def prepare(self, parsed: ResponsesCall, team: str, request_id: str) -> ResponsesCall:
        """A continued conversation: its stored items come before the new input."""
        if parsed.previous_response_id is None:
            return parsed
        conversation = await self.store.conversation(team, parsed.previous_response_id, request_id)
        return parse_responses_request(parsed.body, conversation)

    async def keep(
        self, parsed: ResponsesCall, team: str, answer: bytes | Writer, request_id: str
    ) -> None:
        """`store` (the default): the response, its input and the conversation so far."""
        if not parsed.store:
            return
        if isinstance(answer, bytes):
            response = orjson.loads(answer)
        else:
            assert isinstance(answer, ResponsesWriter) and answer.final is not None
            response = answer.final
        conversation = parsed.conversation + parsed.input_items + response["output"]
        await self.store.put(team, response, parsed.input_items, conversation, request_id)

    def parse(self, body: object) -> ResponsesCall:
        return parse_responses_request(body)

    def estimate(self, parsed: ResponsesCall) -> Estimate:
        request = parsed.request
        return Estimate(estimate_input_tokens(request), chat_output_tokens(request))

    def writer(self, parsed: ResponsesCall, meta: Completion) -> ResponsesWriter:
        return ResponsesWriter(parsed, meta)

    def body(
        self,
        parsed: ResponsesCall,
        meta: Completion,
        choices: dict[int, ChoiceText],
        summary: pb.Summary,
    ) -> bytes:
        return response_body(parsed, meta, choices, summary)
