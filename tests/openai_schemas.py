"""Validate answers against OpenAI's own response schemas (../shared/reference).

The description is OpenAPI 3.1 with some 3.0-style `nullable: true` left in; those
become JSON Schema `null` alternatives so that jsonschema reads it as written.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC = Path(__file__).resolve().parents[2] / "shared" / "reference" / "openai-openapi.yaml"


def _with_nulls(node: Any) -> Any:
    if isinstance(node, list):
        return [_with_nulls(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _with_nulls(value) for key, value in node.items()}
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


@functools.cache
def _components() -> dict[str, Any]:
    with SPEC.open("rb") as file:
        spec = yaml.load(file, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {"schemas": _with_nulls(spec["components"]["schemas"])}


@functools.cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = {"components": _components(), "$ref": f"#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema)


def problems(name: str, instance: object) -> list[str]:
    """Where `instance` breaks schema `name`, one line each (empty when it conforms)."""
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in _validator(name).iter_errors(instance)
    ]
