"""POST /v1/chat/completions: the chat route of the generation pipeline."""

from __future__ import annotations

from aqueduct.inference.v1 import inference_pb2 as pb

from core.estimates import chat_output_tokens, estimate_input_tokens
from edge.chat_render import ChatWriter, completion_json
from edge.chat_request import ChatCall, parse_chat_request
from edge.pipeline import Estimate, PlainRoute
from edge.rendering import ChoiceText, Completion


class ChatRoute(PlainRoute):
    id_prefix = "chatcmpl-"
    name = "/v1/chat/completions"
    operation = "chat"

    def parse(self, body: object) -> ChatCall:
        return parse_chat_request(body)

    def estimate(self, parsed: ChatCall) -> Estimate:
        request = parsed.request
        return Estimate(estimate_input_tokens(request), chat_output_tokens(request))

    def writer(self, parsed: ChatCall, meta: Completion) -> ChatWriter:
        sampling = parsed.request.sampling
        return ChatWriter(
            meta,
            parsed.include_usage,
            sampling.n if sampling.HasField("n") else 1,
            sampling.logprobs,
        )

    def body(
        self,
        parsed: ChatCall,
        meta: Completion,
        choices: dict[int, ChoiceText],
        summary: pb.Summary,
    ) -> bytes:
        return completion_json(meta, choices, summary, parsed.request.sampling.logprobs)
