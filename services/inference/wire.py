"""Inference domain values -> protobuf requests, and stream messages -> domain
events: the reverse of `convert`, for an inference worker that hands a request
for a local model to the worker that runs it (services.inference.forwarded).

`convert.chat_request(wire.chat_message(r))` is `r` again (tests check it)."""

from __future__ import annotations

from array import array

from aqueduct.inference.v1 import inference_pb2 as pb

from core.enum_names import FINISH_REASONS
from services.inference.embedding import EmbeddingInput, Embeddings, EmbedRequest
from services.inference.generation import (
    AudioInput,
    ChatRequest,
    CompletionRequest,
    Delta,
    Event,
    Finish,
    ImageInput,
    Message,
    Part,
    Sampling,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
)

RESPONSE_FORMAT_TYPES = {
    "text": pb.RESPONSE_FORMAT_TYPE_TEXT,
    "json_object": pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT,
    "json_schema": pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
    "grammar": pb.RESPONSE_FORMAT_TYPE_GRAMMAR,
}


def sampling_message(s: Sampling) -> pb.SamplingParams:
    f = s.response_format
    message = pb.SamplingParams(
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        stops=s.stops,
        seed=s.seed,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        n=s.n,
        logprobs=s.logprobs,
        top_logprobs=s.top_logprobs,
        logit_bias=dict(s.logit_bias),
        response_format=pb.ResponseFormat(
            type=RESPONSE_FORMAT_TYPES[f.type],
            json_schema=f.schema,
            strict=f.strict,
            name=f.name,
            grammar=f.grammar,
            grammar_syntax="gbnf" if f.grammar else "",
        ),
    )
    return message


def chat_message(r: ChatRequest) -> pb.StreamChatCompletionRequest:
    return pb.StreamChatCompletionRequest(
        model=r.model,
        messages=[_message(m) for m in r.messages],
        sampling=sampling_message(r.sampling),
        user=r.user,
        fallback_models=r.fallback_models,
        allowed_models=r.allowed_models,
        no_configured_fallbacks=not r.configured_fallbacks,
        tools_json=r.tools_json,
        tool_choice_json=r.tool_choice_json,
        parallel_tool_calls=r.parallel_tool_calls,
    )


def _message(m: Message) -> pb.ChatMessage:
    return pb.ChatMessage(
        role=m.role,
        content="" if m.parts else m.content,
        name=m.name,
        tool_calls=[pb.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in m.tool_calls],
        tool_call_id=m.tool_call_id,
        parts=[_part(p) for p in m.parts],
    )


def _part(p: Part) -> pb.ContentPart:
    if isinstance(p, ImageInput):
        image = pb.ImagePart(media_type=p.media_type, detail=p.detail, filename=p.filename)
        if p.url:
            image.url = p.url
        else:
            image.data = p.data
        return pb.ContentPart(image=image)
    if isinstance(p, AudioInput):
        return pb.ContentPart(audio=pb.AudioPart(data=p.data, format=p.format))
    return pb.ContentPart(text=p)


def _input(i: EmbeddingInput) -> pb.EmbeddingInput:
    if isinstance(i, str):
        return pb.EmbeddingInput(text=i)
    return pb.EmbeddingInput(tokens=pb.TokenIds(ids=i))


def completion_message(r: CompletionRequest) -> pb.StreamCompletionRequest:
    return pb.StreamCompletionRequest(
        model=r.model,
        prompts=[_input(p) for p in r.prompts],
        sampling=sampling_message(r.sampling),
        suffix=r.suffix,
        echo=r.echo,
        best_of=r.best_of,
        user=r.user,
        fallback_models=r.fallback_models,
        allowed_models=r.allowed_models,
        no_configured_fallbacks=not r.configured_fallbacks,
    )


def embed_message(r: EmbedRequest) -> pb.CreateEmbeddingsRequest:
    return pb.CreateEmbeddingsRequest(
        model=r.model,
        inputs=[_input(i) for i in r.inputs],
        dimensions=r.dimensions,
        user=r.user,
        fallback_models=r.fallback_models,
        allowed_models=r.allowed_models,
        no_configured_fallbacks=not r.configured_fallbacks,
        input_type=r.input_type,
    )


def event(message: pb.StreamChatCompletionResponse | pb.StreamCompletionResponse) -> Event:
    """One stream message as the backend event it was made from."""
    if message.WhichOneof("event") == "summary":
        s = message.summary
        return Finish(
            {e.choice_index: FINISH_REASONS[e.finish_reason] for e in s.choice_ends},
            s.usage.prompt_tokens,
            s.usage.completion_tokens,
        )
    return [_delta(d) for d in message.deltas.deltas]


def _delta(d: pb.Delta) -> Delta:
    return Delta(
        choice_index=d.choice_index,
        text=d.content,
        logprobs=tuple(
            TokenLogprob(
                lp.token,
                lp.logprob,
                lp.bytes,
                tuple(TopLogprob(t.token, t.logprob, t.bytes) for t in lp.top_logprobs),
            )
            for lp in d.logprobs
        ),
        tool_calls=tuple(ToolCallDelta(c.index, c.id, c.name, c.arguments) for c in d.tool_calls),
        tokens=d.tokens,
    )


def embeddings(message: pb.CreateEmbeddingsResponse) -> Embeddings:
    vectors = [array("f", e.values) for e in message.embeddings]  # float32, as sent
    return Embeddings(vectors, message.usage.prompt_tokens)
