"""POST /v1/completions: the text-completion route of the generation pipeline."""

from __future__ import annotations

from aqueduct.inference.v1 import inference_pb2 as pb

from core.estimates import completion_output_tokens, estimate_completion_input_tokens
from edge.completions_protocol import (
    CompletionCall,
    CompletionWriter,
    completion_json,
    parse_completion_request,
)
from edge.pipeline import Estimate, PlainRoute
from edge.rendering import ChoiceText, Completion


class CompletionsRoute(PlainRoute):
    id_prefix = "cmpl-"
    name = "/v1/completions"
    operation = "text_completion"

    def parse(self, body: object) -> CompletionCall:
        return parse_completion_request(body)

    def estimate(self, parsed: CompletionCall) -> Estimate:
        request = parsed.request
        return Estimate(
            estimate_completion_input_tokens(request), completion_output_tokens(request)
        )

    def writer(self, parsed: CompletionCall, meta: Completion) -> CompletionWriter:
        return CompletionWriter(meta, parsed.include_usage, parsed.logprobs is not None)

    def body(
        self,
        parsed: CompletionCall,
        meta: Completion,
        choices: dict[int, ChoiceText],
        summary: pb.Summary,
    ) -> bytes:
        return completion_json(meta, choices, summary, parsed.logprobs is not None)
