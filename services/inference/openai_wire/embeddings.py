"""Embeddings on the wire: the request body out, the vectors in."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from services.inference.embedding import EmbedRequest
from services.inference.openai_wire.errors import bad_response, load_object


def embeddings_payload(request: EmbedRequest, upstream_model: str) -> bytes:
    body: dict[str, Any] = {
        "model": upstream_model,
        "input": list(request.inputs),
        "encoding_format": "float",
    }
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    if request.user:
        body["user"] = request.user
    if request.input_type:
        body["input_type"] = request.input_type
    return orjson.dumps(body)


def parse_embeddings(body: bytes, count: int, model: str) -> tuple[NDArray[np.float32], int | None]:
    """The vectors of an embeddings answer in input order, and its prompt tokens."""
    answer = load_object(body, model, "the embeddings answer")
    data = answer.get("data")
    if not isinstance(data, list) or len(data) != count:
        raise bad_response(model, f"expected {count} embeddings in 'data'")
    rows: list[Any] = [None] * count
    for position, item in enumerate(data):
        if not isinstance(item, dict):
            raise bad_response(model, "an embedding is not an object")
        index = item.get("index", position)
        if not isinstance(index, int) or not 0 <= index < count or rows[index] is not None:
            raise bad_response(model, "embedding indexes are not 0..n-1")
        vector = item.get("embedding")
        try:
            if isinstance(vector, str):
                rows[index] = np.frombuffer(base64.b64decode(vector, validate=True), "<f4")
            else:
                rows[index] = np.asarray(vector, dtype=np.float32)
        except (ValueError, TypeError, binascii.Error):
            raise bad_response(model, "an embedding is not an array of numbers") from None
    try:
        matrix = np.vstack(rows).astype(np.float32, copy=False)
    except ValueError:
        raise bad_response(model, "the embeddings differ in length") from None
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise bad_response(model, "an embedding is empty")
    usage = answer.get("usage")
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return matrix, prompt if isinstance(prompt, int) and prompt >= 0 else None
