"""OpenAI embeddings on the wire <-> aqueduct.inference.v1 messages.

Pure functions: parse and check `POST /v1/embeddings` bodies (naming the
offending field in `param`), render `CreateEmbeddingResponse`.
"""

from __future__ import annotations

import array
import base64
import sys
from dataclasses import dataclass
from typing import Any

import orjson
from aqueduct.inference.v1 import inference_pb2 as pb

from edge.errors import invalid
from edge.request_fields import object_with_model, parse_fallback_models

MAX_INPUTS = 2048  # OpenAI's limit per request
MAX_DIMENSIONS = 65536
INPUT_TYPES = {"query": "query", "passage": "passage", "document": "passage"}


@dataclass(frozen=True)
class EmbeddingsCall:
    request: pb.CreateEmbeddingsRequest
    base64: bool  # encoding_format "base64"


def parse_embeddings_request(raw: object) -> EmbeddingsCall:
    body, model = object_with_model(raw)
    request = pb.CreateEmbeddingsRequest(
        model=model, inputs=_inputs(body.get("input")), fallback_models=parse_fallback_models(body)
    )
    encoding = body.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        raise invalid(
            "encoding_format", "'encoding_format' must be 'float' or 'base64'.", "invalid_value"
        )
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if not _is_int(dimensions) or not 1 <= dimensions <= MAX_DIMENSIONS:
            raise invalid(
                "dimensions", f"'dimensions' must be a whole number from 1 to {MAX_DIMENSIONS}."
            )
        request.dimensions = dimensions
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid("user", "'user' must be a string.", "invalid_type")
    request.user = user or ""
    input_type = body.get("input_type")
    if input_type is not None:
        if input_type not in INPUT_TYPES:
            raise invalid("input_type", "'input_type' must be 'query', 'passage' or 'document'.")
        request.input_type = INPUT_TYPES[input_type]
    return EmbeddingsCall(request, encoding == "base64")


def _inputs(value: object) -> list[pb.EmbeddingInput]:
    if value is None:
        raise invalid("input", "'input' is required.", "missing_required_parameter")
    if isinstance(value, str):
        return [_text(value, "input")]
    if not isinstance(value, list):
        raise invalid(
            "input",
            "'input' must be a string, an array of strings, or token arrays.",
            "invalid_type",
        )
    if not value:
        raise invalid("input", "'input' must not be empty.")
    if len(value) > MAX_INPUTS:
        raise invalid("input", f"'input' may hold at most {MAX_INPUTS} items; got {len(value)}.")
    if all(_is_int(v) for v in value):
        return [_tokens(value, "input")]
    if all(isinstance(v, str) for v in value):
        return [_text(v, f"input[{i}]") for i, v in enumerate(value)]
    if all(isinstance(v, list) for v in value):
        return [_tokens(v, f"input[{i}]") for i, v in enumerate(value)]
    raise invalid(
        "input",
        "'input' must be one kind: strings, integers (one token array) or token arrays.",
        "invalid_type",
    )


def _text(text: str, param: str) -> pb.EmbeddingInput:
    if not text:
        raise invalid(param, f"'{param}' must not be an empty string.")
    return pb.EmbeddingInput(text=text)


def _tokens(ids: list[Any], param: str) -> pb.EmbeddingInput:
    if not ids:
        raise invalid(param, f"'{param}' must not be an empty token array.")
    if not all(_is_int(t) and 0 <= t < 2**31 for t in ids):
        raise invalid(param, f"'{param}' must hold token ids (non-negative integers).")
    return pb.EmbeddingInput(tokens=pb.TokenIds(ids=ids))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _base64(values: Any) -> str:
    floats = array.array("f", values)  # float32, as OpenAI encodes it
    if sys.byteorder == "big":
        floats.byteswap()  # little-endian on the wire
    return base64.b64encode(floats.tobytes()).decode()


def embeddings_json(response: pb.CreateEmbeddingsResponse, as_base64: bool) -> bytes:
    tokens = response.usage.prompt_tokens
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": e.index,
                    "embedding": _base64(e.values) if as_base64 else list(e.values),
                }
                for e in response.embeddings
            ],
            "model": response.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
