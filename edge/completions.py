"""POST /v1/completions: the text-completion route of the generation pipeline."""

from __future__ import annotations

from aqueduct.inference.v1 import inference_pb2 as pb

from edge.completions_protocol import (
    CompletionCall,
    CompletionWriter,
    completion_json,
    parse_completion_request,
)
from edge.limits import estimate_completion_input_tokens
from edge.pipeline import Estimate
from edge.rendering import ChoiceText, Completion


class CompletionsRoute:
    id_prefix = "cmpl-"
    name = "/v1/completions"
    operation = "text_completion"

    def parse(self, body: object) -> CompletionCall:
        return parse_completion_request(body)

    def estimate(self, parsed: CompletionCall) -> Estimate:
        request = parsed.request
        # Every candidate of every prompt may run to max_tokens.
        candidates = max(request.best_of, request.sampling.n, 1) * len(request.prompts)
        return Estimate(
            estimate_completion_input_tokens(request), request.sampling.max_tokens * candidates
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
