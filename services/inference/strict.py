"""`response_format` json_schema with `strict`: the final text of every choice
that finished by itself must be JSON valid against the schema, else the
generation ends in an error instead of returning it. Local output is already
constrained while decoding; this is the check for upstreams, which only
promise it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import orjson

from core.errors import Kind, ServiceError
from services.inference.generation import Event, Finish, ResponseFormat, Routed


def output_problem(text: str, schema: dict[str, Any]) -> str | None:
    """Why `text` is not JSON valid against `schema`, or None."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "the output is not valid JSON"
    validator = jsonschema.validators.validator_for(schema)(schema)
    found = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if found is None:
        return None
    where = "/".join(str(p) for p in found.absolute_path) or "the top level"
    return f"at {where}: {found.message}"


def checked(
    events: AsyncGenerator[Event | Routed, None], response_format: ResponseFormat
) -> AsyncGenerator[Event | Routed, None]:
    """`events`, with each finished choice's text checked against a strict schema
    (and untouched, with no extra hop per message, when there is nothing to check)."""
    if response_format.type != "json_schema" or not response_format.strict:
        return events
    return _checked(events, response_format)


async def _checked(
    events: AsyncGenerator[Event | Routed, None], response_format: ResponseFormat
) -> AsyncGenerator[Event | Routed, None]:
    schema = orjson.loads(response_format.schema or "{}")
    texts: dict[int, list[str]] = {}
    model = ""
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, Routed):
                model = event.model
            elif isinstance(event, list):
                for delta in event:
                    texts.setdefault(delta.choice_index, []).append(delta.text)
            elif isinstance(event, Finish):
                for index, reason in sorted(event.finish_reasons.items()):
                    if reason != "stop":
                        continue  # cut by max_tokens: incomplete by the caller's choice
                    problem = output_problem("".join(texts.get(index, [])), schema)
                    if problem is not None:
                        raise ServiceError(
                            Kind.UNAVAILABLE,
                            "UPSTREAM_BAD_RESPONSE",
                            f"Model '{model}' answered choice {index} with output that does "
                            f"not match the strict JSON schema '{response_format.name}': "
                            f"{problem}.",
                            param="response_format",
                        )
            yield event
