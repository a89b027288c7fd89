"""Token estimates a reservation takes before a request runs (settling corrects
them with the counts the backend reports). Shared by the edge, which meters HTTP
clients, and inference, which meters key-bearing internal callers, so both
reserve the same for the same request."""

from __future__ import annotations

from aqueduct.inference.v1 import inference_pb2

CHARS_PER_TOKEN = 4  # a deliberately generous estimate; settling corrects it
TOKENS_PER_MESSAGE = 4

# Images and audio, before the upstream says what they cost: an image as
# OpenAI's high-detail price of a 1024x1024 image (85 + 4 tiles of 170), 85 at
# detail "low"; audio at 10 tokens a second of 16 kHz 16-bit mono WAV.
IMAGE_TOKENS = 765
LOW_DETAIL_IMAGE_TOKENS = 85
AUDIO_BYTES_PER_TOKEN = 3200


def estimate_input_tokens(request: inference_pb2.StreamChatCompletionRequest) -> int:
    chars = sum(len(m.content) + len(m.role) for m in request.messages)
    media = 0
    for message in request.messages:
        for part in message.parts:
            chars += len(part.text)
            media += _part_tokens(part)
    return chars // CHARS_PER_TOKEN + media + TOKENS_PER_MESSAGE * len(request.messages)


def _part_tokens(part: inference_pb2.ContentPart) -> int:
    kind = part.WhichOneof("part")
    if kind == "image":
        return LOW_DETAIL_IMAGE_TOKENS if part.image.detail == "low" else IMAGE_TOKENS
    if kind == "audio":
        return -(-len(part.audio.data) // AUDIO_BYTES_PER_TOKEN)
    return 0


def chat_output_tokens(request: inference_pb2.StreamChatCompletionRequest) -> int | None:
    """Every choice may run to max_tokens; None: no max_tokens (reserve the default)."""
    sampling = request.sampling
    return sampling.max_tokens * max(sampling.n, 1) if sampling.HasField("max_tokens") else None


def estimate_completion_input_tokens(request: inference_pb2.StreamCompletionRequest) -> int:
    chars = sum(len(p.text) for p in request.prompts if p.HasField("text")) + len(request.suffix)
    ids = sum(len(p.tokens.ids) for p in request.prompts if p.HasField("tokens"))
    return chars // CHARS_PER_TOKEN + ids + len(request.prompts)


def completion_output_tokens(request: inference_pb2.StreamCompletionRequest) -> int:
    """Every candidate of every prompt may run to max_tokens."""
    candidates = max(request.best_of, request.sampling.n, 1) * len(request.prompts)
    return request.sampling.max_tokens * candidates


def estimate_embedding_tokens(request: inference_pb2.CreateEmbeddingsRequest) -> int:
    chars = sum(len(i.text) for i in request.inputs if i.HasField("text"))
    ids = sum(len(i.tokens.ids) for i in request.inputs if i.HasField("tokens"))
    return chars // CHARS_PER_TOKEN + ids + len(request.inputs)


def estimate_tokens(text_chars: int) -> int:
    return -(-text_chars // CHARS_PER_TOKEN)
