"""POST /v1/chat/completions: the chat route of the generation pipeline."""

from __future__ import annotations

from aqueduct.inference.v1 import inference_pb2 as pb

from edge.chat_render import ChatWriter, completion_json
from edge.chat_request import ChatCall, parse_chat_request
from edge.limits import estimate_input_tokens
from edge.pipeline import Estimate
from edge.rendering import ChoiceText, Completion


class ChatRoute:
    id_prefix = "chatcmpl-"
    name = "/v1/chat/completions"
    operation = "chat"

    def parse(self, body: object) -> ChatCall:
        return parse_chat_request(body)

    def estimate(self, parsed: ChatCall) -> Estimate:
        sampling = parsed.request.sampling
        return Estimate(
            estimate_input_tokens(parsed.request),
            # Every choice may run to max_tokens.
            sampling.max_tokens * max(sampling.n, 1) if sampling.HasField("max_tokens") else None,
        )

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
