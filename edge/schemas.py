"""JSON Schema checks for `response_format` json_schema (jsonschema, Draft 2020-12
unless the schema names another draft). Pure."""

from __future__ import annotations

from typing import Any

import jsonschema  # type: ignore[import-untyped]


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not a valid JSON Schema, or None."""
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        return str(error.message)
    except RecursionError:
        return "it is nested too deeply"
    return None
