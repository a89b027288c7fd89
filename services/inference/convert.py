"""Protobuf <-> inference domain values, for the inference servicer."""

from __future__ import annotations

from aqueduct.inference.v1 import inference_pb2 as pb

from core.enum_names import FINISH_REASONS
from core.errors import Kind, ServiceError
from services.inference.embedding import EmbeddingInput, EmbedRequest
from services.inference.generation import (
    AudioInput,
    ChatRequest,
    CompletionRequest,
    Delta,
    Finish,
    ImageInput,
    Message,
    Part,
    Prompt,
    ResponseFormat,
    Sampling,
    ToolCall,
)
from services.inference.openai_backend import OpenAIBackend
from services.inference.registry import ServedModel

RESPONSE_FORMATS = {
    pb.RESPONSE_FORMAT_TYPE_UNSPECIFIED: "text",
    pb.RESPONSE_FORMAT_TYPE_TEXT: "text",
    pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT: "json_object",
    pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: "json_schema",
    pb.RESPONSE_FORMAT_TYPE_GRAMMAR: "grammar",
}


def sampling(s: pb.SamplingParams) -> Sampling:
    f = s.response_format
    if f.grammar_syntax not in ("", "gbnf"):
        raise ServiceError(
            Kind.INVALID_ARGUMENT,
            "UNSUPPORTED_GRAMMAR_SYNTAX",
            f"Grammar syntax '{f.grammar_syntax}' is not supported; use 'gbnf'.",
            param="response_format",
        )
    return Sampling(
        max_tokens=s.max_tokens if s.HasField("max_tokens") else None,
        temperature=s.temperature if s.HasField("temperature") else None,
        top_p=s.top_p if s.HasField("top_p") else None,
        stops=tuple(s.stops),
        seed=s.seed if s.HasField("seed") else None,
        presence_penalty=s.presence_penalty if s.HasField("presence_penalty") else None,
        frequency_penalty=s.frequency_penalty if s.HasField("frequency_penalty") else None,
        n=s.n if s.HasField("n") and s.n > 0 else 1,
        logprobs=s.logprobs,
        top_logprobs=s.top_logprobs,
        logit_bias=tuple(sorted(s.logit_bias.items())),
        response_format=ResponseFormat(
            type=RESPONSE_FORMATS.get(f.type, "text"),
            schema=f.json_schema,
            strict=f.strict,
            name=f.name,
            grammar=f.grammar,
        ),
    )


def chat_request(message: pb.StreamChatCompletionRequest, whole: bool = False) -> ChatRequest:
    return ChatRequest(
        model=message.model,
        messages=tuple(_message(i, m) for i, m in enumerate(message.messages)),
        sampling=sampling(message.sampling),
        user=message.user,
        fallback_models=tuple(message.fallback_models),
        allowed_models=tuple(message.allowed_models),
        configured_fallbacks=not message.no_configured_fallbacks,
        tools_json=message.tools_json,
        tool_choice_json=message.tool_choice_json,
        parallel_tool_calls=(
            message.parallel_tool_calls if message.HasField("parallel_tool_calls") else None
        ),
        whole=whole,
    )


def _message(index: int, m: pb.ChatMessage) -> Message:
    parts = tuple(_part(f"messages[{index}].content[{j}]", p) for j, p in enumerate(m.parts))
    content = "\n".join(p for p in parts if isinstance(p, str)) if parts else m.content
    return Message(
        m.role,
        content,
        m.name,
        tuple(ToolCall(c.id, c.name, c.arguments) for c in m.tool_calls),
        m.tool_call_id,
        parts,
    )


def _part(param: str, p: pb.ContentPart) -> Part:
    kind = p.WhichOneof("part")
    if kind == "image":
        i = p.image
        if not i.url and not (i.data and i.media_type.startswith("image/")):
            raise _bad_part(param, "an image part needs a url, or data and an image media_type")
        return ImageInput(
            url=i.url, data=i.data, media_type=i.media_type, detail=i.detail, filename=i.filename
        )
    if kind == "audio":
        if not p.audio.data or not p.audio.format:
            raise _bad_part(param, "an audio part needs data and a format")
        return AudioInput(p.audio.data, p.audio.format)
    return p.text


def _bad_part(param: str, problem: str) -> ServiceError:
    return ServiceError(
        Kind.INVALID_ARGUMENT, "INVALID_CONTENT_PART", f"{param}: {problem}.", param=param
    )


def completion_request(
    message: pb.StreamCompletionRequest, whole: bool = False
) -> CompletionRequest:
    prompts: list[Prompt] = [
        p.text if p.WhichOneof("input") != "tokens" else tuple(p.tokens.ids)
        for p in message.prompts
    ]
    return CompletionRequest(
        model=message.model,
        prompts=tuple(prompts),
        sampling=sampling(message.sampling),
        suffix=message.suffix,
        echo=message.echo,
        best_of=message.best_of if message.HasField("best_of") else None,
        user=message.user,
        fallback_models=tuple(message.fallback_models),
        allowed_models=tuple(message.allowed_models),
        configured_fallbacks=not message.no_configured_fallbacks,
        whole=whole,
    )


def delta_message(delta: Delta) -> pb.Delta:
    return pb.Delta(
        choice_index=delta.choice_index,
        content=delta.text,
        tokens=delta.tokens,
        logprobs=[
            pb.TokenLogprob(
                token=lp.token,
                logprob=lp.logprob,
                bytes=lp.bytes,
                top_logprobs=[
                    pb.TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in lp.top
                ],
            )
            for lp in delta.logprobs
        ],
        tool_calls=[
            pb.ToolCallDelta(index=c.index, id=c.id, name=c.name, arguments=c.arguments)
            for c in delta.tool_calls
        ],
    )


def embed_request(message: pb.CreateEmbeddingsRequest) -> EmbedRequest:
    inputs: list[EmbeddingInput] = [
        i.text if i.WhichOneof("input") != "tokens" else tuple(i.tokens.ids) for i in message.inputs
    ]
    return EmbedRequest(
        model=message.model,
        inputs=tuple(inputs),
        dimensions=message.dimensions if message.HasField("dimensions") else None,
        user=message.user,
        fallback_models=tuple(message.fallback_models),
        allowed_models=tuple(message.allowed_models),
        configured_fallbacks=not message.no_configured_fallbacks,
        input_type=message.input_type,
    )


def model_message(model_id: str, served: ServedModel) -> pb.Model:
    return pb.Model(
        id=model_id,
        owned_by=served.spec.owned_by,
        created=served.created,
        root=served.spec.name,
        capabilities=served.spec.capabilities,
        backend=served.spec.backend,
        upstreams=upstream_health(served),
    )


def upstream_health(served: ServedModel) -> list[pb.UpstreamHealth]:
    """Each upstream replica's circuit state now (what /metrics shows too)."""
    backend = served.backend
    if not isinstance(backend, OpenAIBackend):
        return []
    return [
        pb.UpstreamHealth(
            label=replica.target.label,
            state=backend.balancer.state(replica),
            in_flight=replica.outstanding,
            failures=replica.failed_total,
        )
        for replica in backend.balancer.replicas
    ]


def summary_message(finish: Finish, model: str, provider: str = "") -> pb.Summary:
    return pb.Summary(
        choice_ends=[
            pb.ChoiceEnd(choice_index=i, finish_reason=FINISH_REASONS.by_name[r])
            for i, r in sorted(finish.finish_reasons.items())
        ],
        usage=pb.Usage(
            prompt_tokens=finish.prompt_tokens, completion_tokens=finish.completion_tokens
        ),
        model=model,
        provider=provider,
    )
