"""`response_format` as a grammar that constrains decoding (llama.cpp GBNF).

JSON object mode uses llama.cpp's JSON grammar; a JSON schema is converted to
GBNF by llama.cpp's own converter; a grammar is taken as it is. Pure: no model.
"""

from __future__ import annotations

from typing import Any

import orjson

from core.errors import Kind, ServiceError
from services.inference.generation import ResponseFormat


def grammar_text(response_format: ResponseFormat) -> str | None:
    """The GBNF grammar the output must match, or None for free text."""
    from llama_cpp import llama_grammar

    kind = response_format.type
    if kind == "text":
        return None
    if kind == "json_object":
        return str(llama_grammar.JSON_GBNF)
    if kind == "json_schema":
        try:
            unsupported = unenforceable_keyword(orjson.loads(response_format.schema or "{}"))
        except RecursionError:
            unsupported = "(nesting: the schema is nested too deeply)"
        if unsupported is not None:
            raise ServiceError(
                Kind.INVALID_ARGUMENT,
                "UNSUPPORTED_SCHEMA",
                f"'response_format.json_schema.schema' uses '{unsupported}', which this "
                "model cannot enforce while decoding (supported: type, properties, required, "
                "additionalProperties, items, prefixItems, minItems, maxItems, minLength, "
                "maxLength, pattern, enum, const, anyOf, oneOf, allOf, $ref, $defs).",
                param="response_format.json_schema.schema",
            )
        try:
            return str(llama_grammar.json_schema_to_gbnf(response_format.schema))
        except Exception as error:  # the converter raises bare exceptions of many kinds
            raise ServiceError(
                Kind.INVALID_ARGUMENT,
                "UNSUPPORTED_SCHEMA",
                f"'response_format.json_schema.schema' cannot be turned into a grammar: {error}",
                param="response_format",
            ) from None
    if kind == "grammar":
        return response_format.grammar
    raise ServiceError(
        Kind.INVALID_ARGUMENT,
        "UNSUPPORTED_RESPONSE_FORMAT",
        f"'response_format' type '{kind}' is not supported.",
        param="response_format",
    )


# Keywords llama.cpp's JSON-schema-to-grammar converter turns into grammar rules,
# and annotations that constrain nothing. Anything else (minimum, multipleOf,
# uniqueItems, not, if/then…) it would silently drop, so output could break the
# schema: such schemas are refused rather than half-enforced.
ENFORCED_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "prefixItems",
        "minItems", "maxItems", "minLength", "maxLength", "pattern", "enum", "const",
        "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions", "format",
        "$schema", "$id", "$comment", "title", "description", "default", "examples",
    }
)  # fmt: skip
SCHEMA_MAPS = ("properties", "$defs", "definitions")
SCHEMA_LISTS = ("prefixItems", "anyOf", "oneOf", "allOf")


def unenforceable_keyword(schema: Any, path: str = "") -> str | None:
    """The first keyword (with its path) a grammar cannot enforce, or None."""
    if not isinstance(schema, dict):
        return None
    for key, value in schema.items():
        where = f"{path}/{key}" if path else key
        if key not in ENFORCED_KEYWORDS:
            return where
        if key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
            return where  # only references inside the schema: nothing is fetched
        if key in SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                found = unenforceable_keyword(sub, f"{where}/{name}")
                if found:
                    return found
        elif key in SCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                found = unenforceable_keyword(sub, f"{where}/{i}")
                if found:
                    return found
        elif key in ("items", "additionalProperties"):
            found = unenforceable_keyword(value, where)
            if found:
                return found
    return None
