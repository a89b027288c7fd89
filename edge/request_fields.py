"""Request fields that every OpenAI generation route reads the same way: the body
and its model, `stream`/`stream_options`, sampling (`max_tokens`, `temperature`,
`stop`, `logit_bias`, `response_format`…) and Aqueduct's `models` fallback list.

Each check names the offending field in `param`. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

import orjson
from aqueduct.inference.v1 import inference_pb2 as pb

from edge import schemas
from edge.errors import invalid

MAX_FALLBACK_MODELS = 16
MAX_N = 128
MAX_LOGIT_BIAS = 1024
# Tool calling: passed to upstreams by chat; not a parameter of text completions.
TOOL_PARAMS = frozenset({"tools", "tool_choice", "parallel_tool_calls"})
# Fields of OpenAI's API this version does not implement yet: refused, never dropped.
UNSUPPORTED_PARAMS = frozenset(
    {
        "functions",
        "function_call",
        "audio",
        "web_search_options",
        "reasoning_effort",
    }
)


def object_with_model(body: object) -> tuple[dict[str, Any], str]:
    """The body as a JSON object and its `model`; what every endpoint checks first."""
    if not isinstance(body, dict):
        raise invalid(None, "The request body must be a JSON object.", "invalid_type")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid(
            "model",
            "'model' is required and must be a non-empty string.",
            "missing_required_parameter" if model is None else "invalid_type",
        )
    return body, model


def parse_fallback_models(body: dict[str, Any]) -> list[str]:
    """`models`: ids to try in order when `model` cannot serve (OpenRouter's field)."""
    models = body.get("models")
    if models is None:
        return []
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise invalid("models", "'models' must be an array of model ids.", "invalid_type")
    if len(models) > MAX_FALLBACK_MODELS:
        raise invalid(
            "models", f"'models' may list at most {MAX_FALLBACK_MODELS} ids; got {len(models)}."
        )
    return models


def parse_logit_bias(body: dict[str, Any]) -> dict[int, float]:
    """`logit_bias`: token id (as a JSON object key) -> bias between -100 and 100."""
    bias = body.get("logit_bias")
    if bias is None:
        return {}
    if not isinstance(bias, dict):
        raise invalid(
            "logit_bias", "'logit_bias' must be an object of token id -> bias.", "invalid_type"
        )
    if len(bias) > MAX_LOGIT_BIAS:
        raise invalid(
            "logit_bias", f"'logit_bias' may hold at most {MAX_LOGIT_BIAS} tokens; got {len(bias)}."
        )
    parsed: dict[int, float] = {}
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit()) or int(key) >= 2**31:
            raise invalid("logit_bias", f"'logit_bias' keys must be token ids; got '{key[:40]}'.")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid("logit_bias", "'logit_bias' values must be numbers.", "invalid_type")
        if not -100 <= value <= 100:
            raise invalid(
                "logit_bias", f"'logit_bias' values must be between -100 and 100; got {value}."
            )
        parsed[int(key)] = float(value)
    return parsed


def parse_response_format(body: dict[str, Any]) -> pb.ResponseFormat | None:
    """`response_format`: text, json_object, json_schema (checked to be a valid
    JSON Schema) or grammar (`grammar` text, `syntax` "gbnf")."""
    value = body.get("response_format")
    if value is None:
        return None
    param = "response_format"
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise invalid(param, "'response_format' must be an object with a 'type'.", "invalid_type")
    kind = value["type"]
    if kind == "text":
        return pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_TEXT)
    if kind == "json_object":
        return pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise invalid(
                f"{param}.json_schema",
                "'response_format.json_schema' is required and must be an object.",
                "invalid_type",
            )
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(
                f"{param}.json_schema.name",
                "'response_format.json_schema.name' is required and must be a non-empty string.",
                "missing_required_parameter",
            )
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise invalid(
                f"{param}.json_schema.schema",
                "'response_format.json_schema.schema' must be a JSON Schema object.",
                "invalid_type",
            )
        problem = schemas.schema_problem(schema)
        if problem:
            raise invalid(
                f"{param}.json_schema.schema",
                f"'response_format.json_schema.schema' is not a valid JSON Schema: {problem}",
            )
        strict = optional_bool(spec, "strict", f"{param}.json_schema.strict") or False
        return pb.ResponseFormat(
            type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
            json_schema=orjson.dumps(schema).decode(),
            strict=strict,
            name=name,
        )
    if kind == "grammar":
        grammar = value.get("grammar")
        if not isinstance(grammar, str) or not grammar.strip():
            raise invalid(
                f"{param}.grammar",
                "'response_format.grammar' is required and must be a non-empty grammar string.",
                "missing_required_parameter",
            )
        syntax = value.get("syntax", "gbnf")
        if syntax != "gbnf":
            raise invalid(
                f"{param}.syntax",
                f"'response_format.syntax' must be 'gbnf' (llama.cpp grammars); got {syntax!r}.",
                "unsupported_value",
            )
        return pb.ResponseFormat(
            type=pb.RESPONSE_FORMAT_TYPE_GRAMMAR, grammar=grammar, grammar_syntax="gbnf"
        )
    raise invalid(
        f"{param}.type",
        "'response_format.type' must be one of text, json_object, json_schema, grammar; "
        f"got '{kind}'.",
        "unsupported_value",
    )


def parse_sampling(body: dict[str, Any]) -> pb.SamplingParams:
    sampling = pb.SamplingParams()
    max_tokens = optional_int(body, "max_completion_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = optional_int(body, "max_tokens", minimum=1)
    if max_tokens is not None:
        sampling.max_tokens = min(max_tokens, 2**31 - 1)
    for name, low, high in (
        ("temperature", 0.0, 2.0),
        ("top_p", 0.0, 1.0),
        ("presence_penalty", -2.0, 2.0),
        ("frequency_penalty", -2.0, 2.0),
    ):
        value = optional_number(body, name, low, high)
        if value is not None:
            setattr(sampling, name, value)
    seed = optional_int(body, "seed", minimum=-(2**63))
    if seed is not None:
        sampling.seed = seed
    sampling.stops.extend(_stops(body.get("stop")))
    n = optional_int(body, "n", minimum=1)
    if n is not None:
        if n > MAX_N:
            raise invalid("n", f"'n' must be between 1 and {MAX_N}; got {n}.")
        sampling.n = n
    for token, bias in parse_logit_bias(body).items():
        sampling.logit_bias[token] = bias
    response_format = parse_response_format(body)
    if response_format is not None:
        sampling.response_format.CopyFrom(response_format)
    return sampling


def _stops(stop: object) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise invalid("stop", "'stop' must be a string or an array of strings.", "invalid_type")
    if len(stop) > 4:
        raise invalid("stop", f"'stop' may hold at most 4 sequences; got {len(stop)}.")
    return [s for s in stop if s]


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_stream(body: dict[str, Any]) -> tuple[bool, bool]:
    """`stream`, and `stream_options.include_usage` (only allowed with a stream)."""
    stream = optional_bool(body, "stream") or False
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise invalid("stream_options", "'stream_options' must be an object.", "invalid_type")
    if not stream:
        raise invalid("stream_options", "'stream_options' is only allowed when 'stream' is true.")
    include_usage = optional_bool(options, "include_usage", "stream_options.include_usage")
    return stream, include_usage or False


def optional_bool(body: dict[str, Any], name: str, param: str | None = None) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise invalid(param or name, f"'{param or name}' must be a boolean.", "invalid_type")
    return value


def optional_int(
    body: dict[str, Any], name: str, minimum: int, maximum: int = 2**63 - 1
) -> int | None:
    """An integer field; the default `maximum` is the largest int64 (protobuf's)."""
    value = body.get(name)
    if value is None:
        return None
    if not is_int(value):
        raise invalid(name, f"'{name}' must be an integer.", "invalid_type")
    if value < minimum:
        raise invalid(name, f"'{name}' must be at least {minimum}; got {value}.")
    if value > maximum:
        raise invalid(name, f"'{name}' must be at most {maximum}; got {value}.")
    return int(value)


def optional_number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(name, f"'{name}' must be a number.", "invalid_type")
    if not low <= value <= high:
        raise invalid(name, f"'{name}' must be between {low:g} and {high:g}; got {value}.")
    return float(value)
