"""The request fields chat and text completions share."""

from __future__ import annotations

from typing import Any

import orjson

from core.errors import Kind, ServiceError
from services.inference.generation import (
    ResponseFormat,
    Sampling,
)


def add_sampling(body: dict[str, Any], s: Sampling) -> None:
    """The sampling fields both chat and text completions send, when set."""
    for name, value in (
        ("max_tokens", s.max_tokens),
        ("temperature", s.temperature),
        ("top_p", s.top_p),
        ("seed", s.seed),
        ("presence_penalty", s.presence_penalty),
        ("frequency_penalty", s.frequency_penalty),
    ):
        if value is not None:
            body[name] = value
    if s.stops:
        body["stop"] = list(s.stops)


def response_format_json(value: ResponseFormat) -> dict[str, Any] | None:
    """OpenAI's `response_format`; a grammar is ours alone, so upstreams refuse it."""
    if value.type == "text":
        return None
    if value.type == "json_object":
        return {"type": "json_object"}
    if value.type == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {
                "name": value.name,
                "schema": orjson.loads(value.schema or "{}"),
                "strict": value.strict,
            },
        }
    raise ServiceError(
        Kind.INVALID_ARGUMENT,
        "UNSUPPORTED_RESPONSE_FORMAT",
        f"'response_format' type '{value.type}' is only supported on the local model; "
        "OpenAI-compatible upstreams take text, json_object and json_schema.",
        param="response_format",
    )
