"""Embeddings on the wire: the request body out, the vectors in."""

from __future__ import annotations

import base64
import binascii
import sys
from array import array
from typing import Any

import orjson

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


def parse_embeddings(body: bytes, count: int, model: str) -> tuple[list[array[float]], int | None]:
    """The vectors of an embeddings answer in input order (float32 rows), and its
    prompt tokens."""
    answer = load_object(body, model, "the embeddings answer")
    data = answer.get("data")
    if not isinstance(data, list) or len(data) != count:
        raise bad_response(model, f"expected {count} embeddings in 'data'")
    rows: list[array[float] | None] = [None] * count
    for position, item in enumerate(data):
        if not isinstance(item, dict):
            raise bad_response(model, "an embedding is not an object")
        index = item.get("index", position)
        if not isinstance(index, int) or not 0 <= index < count or rows[index] is not None:
            raise bad_response(model, "embedding indexes are not 0..n-1")
        vector = item.get("embedding")
        try:
            rows[index] = _row(vector)
        except (ValueError, TypeError, OverflowError, binascii.Error):
            raise bad_response(model, "an embedding is not an array of numbers") from None
    vectors = [row for row in rows if row is not None]
    if len({len(row) for row in vectors}) != 1:
        raise bad_response(model, "the embeddings differ in length")
    if not vectors[0]:
        raise bad_response(model, "an embedding is empty")
    usage = answer.get("usage")
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return vectors, prompt if isinstance(prompt, int) and prompt >= 0 else None


def _row(vector: Any) -> array[float]:
    """One embedding as float32: a list of numbers, or base64 of little-endian float32s."""
    if not isinstance(vector, str):
        return array("f", vector)
    row = array("f")
    row.frombytes(base64.b64decode(vector, validate=True))
    if sys.byteorder == "big":
        row.byteswap()
    return row
