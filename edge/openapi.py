"""The OpenAPI 3.1 document of what this edge serves, at GET /openapi.json.

Written by hand from the parsers in edge/ (they are the source of truth for
what is accepted); kept small: request bodies and the error shape in full,
success bodies by their OpenAI schema names.
"""

from __future__ import annotations

from typing import Any

import orjson

Json = dict[str, Any]

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
TOKEN = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
TOKENS = {"type": "array", "minItems": 1, "items": TOKEN}
STOP = {
    "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]
}
SAMPLING: Json = {
    "max_tokens": {"type": "integer", "minimum": 1},
    "max_completion_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "n": {"type": "integer", "minimum": 1, "maximum": 128},
    "stop": STOP,
    "seed": {"type": "integer"},
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "logit_bias": {"type": "object", "additionalProperties": {"type": "number"}},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    "user": {"type": "string"},
    "metadata": {"type": "object"},
    "models": {
        "type": "array",
        "items": {"type": "string"},
        "maxItems": 16,
        "description": "Fallback model ids, tried in order when `model` cannot serve.",
    },
}
CONTENT_PART = {
    "oneOf": [
        {
            "type": "object",
            "required": ["type", "text"],
            "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
        },
        {
            "type": "object",
            "required": ["type", "file"],
            "properties": {
                "type": {"const": "file"},
                "file": {
                    "type": "object",
                    "properties": {
                        "file_id": {"type": "string"},
                        "filename": {"type": "string"},
                        "file_data": {"type": "string", "description": "data:<mime>;base64,…"},
                    },
                },
            },
        },
        {
            "type": "object",
            "required": ["type", "image_url"],
            "description": "User messages; models with the `vision` capability.",
            "properties": {
                "type": {"const": "image_url"},
                "image_url": {
                    "type": "object",
                    "required": ["url"],
                    "properties": {
                        "url": {
                            "type": "string",
                            "description": "http(s) URL (passed on, not fetched) or "
                            "data:image/{png,jpeg,webp,gif};base64,…",
                        },
                        "detail": {"enum": ["auto", "low", "high"]},
                    },
                },
            },
        },
        {
            "type": "object",
            "required": ["type", "input_audio"],
            "description": "User messages; models with the `audio` capability.",
            "properties": {
                "type": {"const": "input_audio"},
                "input_audio": {
                    "type": "object",
                    "required": ["data", "format"],
                    "properties": {
                        "data": {"type": "string", "description": "base64"},
                        "format": {"enum": ["wav", "mp3"]},
                    },
                },
            },
        },
    ]
}
MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": CONTENT_PART},
                {"type": "null"},
            ]
        },
        "name": {"type": "string"},
        "tool_calls": {"type": "array", "items": {"type": "object"}},
        "tool_call_id": {"type": "string", "description": "required on tool messages"},
    },
}
RESPONSE_FORMAT = {
    "oneOf": [
        {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"enum": ["text", "json_object"]}},
        },
        {
            "type": "object",
            "required": ["type", "json_schema"],
            "properties": {
                "type": {"const": "json_schema"},
                "json_schema": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "schema": {"type": "object"},
                        "strict": {"type": "boolean"},
                    },
                },
            },
        },
        {
            "type": "object",
            "required": ["type", "grammar"],
            "properties": {
                "type": {"const": "grammar"},
                "grammar": {"type": "string"},
                "syntax": {"enum": ["gbnf"]},
            },
        },
    ]
}
CHAT_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "messages": {"type": "array", "minItems": 1, "items": MESSAGE},
        "logprobs": {"type": "boolean"},
        "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
        "response_format": RESPONSE_FORMAT,
        "tools": {
            "type": "array",
            "items": {"type": "object"},
            "description": "Passed to upstream backends; refused on the local model.",
        },
        "tool_choice": {},
        "parallel_tool_calls": {"type": "boolean"},
        **SAMPLING,
    },
}
COMPLETION_REQUEST = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "prompt": {
            "oneOf": [
                {"type": "string"},
                {"type": "array", "minItems": 1, "maxItems": 2048, "items": {"type": "string"}},
                {"type": "array", "minItems": 1, "items": TOKEN},
                {"type": "array", "minItems": 1, "maxItems": 2048, "items": TOKENS},
            ]
        },
        "suffix": {"type": "string"},
        "echo": {"type": "boolean"},
        "best_of": {"type": "integer", "minimum": 1, "maximum": 20},
        "logprobs": {"type": "integer", "minimum": 0, "maximum": 5},
        "response_format": RESPONSE_FORMAT,
        **SAMPLING,
    },
}
EMBEDDINGS_REQUEST = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "input": {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 2048,
                    "items": {"type": "string", "minLength": 1},
                },
                {"type": "array", "minItems": 1, "maxItems": 2048, "items": TOKEN},
                {"type": "array", "minItems": 1, "maxItems": 2048, "items": TOKENS},
            ]
        },
        "encoding_format": {"enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "minimum": 1, "maximum": 65536},
        "user": {"type": "string"},
        "input_type": {"enum": ["query", "passage", "document"]},
        "models": SAMPLING["models"],
    },
}
LIMITS = {
    "type": "object",
    "properties": {
        name: {"type": ["integer", "null"], "minimum": 1}
        for name in ("rpm", "input_tpm", "output_tpm", "max_concurrent")
    },
    "additionalProperties": False,
}
KEY_BODY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "team": {"type": "string", "minLength": 1, "maxLength": 200},
        "models": {"type": ["array", "null"], "items": {"type": "string"}},
        "admin": {"type": "boolean"},
        "expires_at": {"type": ["integer", "null"]},
        "limits": LIMITS,
    },
}
ERRORS = {
    str(status): {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for status, text in (
        (400, "invalid parameter (named in `param`)"),
        (401, "missing or unknown key"),
        (403, "not allowed for this key"),
        (404, "unknown model, file or route"),
        (413, "body too large"),
        (415, "not JSON"),
        (429, "rate limited"),
        (502, "upstream failed"),
        (503, "unavailable"),
        (504, "timed out"),
    )
}


BATCH_REQUEST = {
    "type": "object",
    "required": ["input_file_id", "endpoint", "completion_window"],
    "properties": {
        "input_file_id": {"type": "string", "minLength": 1},
        "endpoint": {"enum": ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]},
        "completion_window": {"enum": ["24h"]},
        "metadata": {
            "type": "object",
            "maxProperties": 16,
            "additionalProperties": {"type": "string", "maxLength": 512},
        },
    },
    "additionalProperties": False,
}


def _json_body(schema: Json) -> Json:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _op(
    summary: str,
    body: Json | None = None,
    ok: str = "OpenAI shape",
    stream: str = "",
    security: bool = True,
) -> Json:
    content: Json = {"application/json": {"schema": {"type": "object", "description": ok}}}
    if stream:
        content["text/event-stream"] = {"schema": _event_stream(stream)}
    operation: Json = {
        "summary": summary,
        "responses": {"200": {"description": ok, "content": content}, **ERRORS},
    }
    if body is not None:
        operation["requestBody"] = body
    if not security:
        operation["security"] = []
    return operation


def _event_stream(chunk: str) -> Json:
    """An SSE body: OpenAPI 3.1 cannot type the events, so the pattern pins their
    framing and the description names each event's schema."""
    return {
        "type": "string",
        "pattern": r"^(data: [^\n]+\n\n)*data: (\[DONE\]|\{\"error\"[^\n]*)\n\n$",
        "description": (
            f"Server-Sent Events: one `data: <JSON>` event per chunk (OpenAI's {chunk}), "
            "then `data: [DONE]`; an error after the stream began is one "
            '`data: {"error": ...}` event (components.schemas.Error) and the stream ends.'
        ),
    }


RESPONSE_ITEM = {"type": "object", "description": "An input item (OpenAI's InputItem)"}
RESPONSES_REQUEST: Json = {
    "type": "object",
    "required": ["model", "input"],
    "additionalProperties": False,
    "properties": {
        "model": {"type": "string"},
        "input": {
            "oneOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "minItems": 1,
                    "items": RESPONSE_ITEM,
                    "description": "message items (input_text, input_file, input_image "
                    "parts), function_call and function_call_output items",
                },
            ]
        },
        "instructions": {"type": "string"},
        "max_output_tokens": {"type": "integer", "minimum": 1},
        "temperature": SAMPLING["temperature"],
        "top_p": SAMPLING["top_p"],
        "tools": {"type": "array", "items": {"type": "object"}, "description": "function tools"},
        "tool_choice": {"oneOf": [{"enum": ["none", "auto", "required"]}, {"type": "object"}]},
        "parallel_tool_calls": {"type": "boolean"},
        "text": {
            "type": "object",
            "properties": {"format": {"type": "object"}},
            "description": "format: text, json_object or json_schema",
        },
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "user": {"type": "string"},
        "store": {"type": "boolean", "default": True},
        "stream": {"type": "boolean"},
        "previous_response_id": {"type": "string"},
        "background": {"const": False},
        "include": {"type": "array", "maxItems": 0},
        "truncation": {"const": "disabled"},
        "models": SAMPLING["models"],
    },
}
RESPONSES_STREAM = {
    "type": "string",
    "pattern": r"^(event: [a-z_.]+\ndata: [^\n]+\n\n)+$",
    "description": (
        "Server-Sent Events: OpenAI's semantic events (ResponseStreamEvent), each "
        "`event: <type>` and `data: <JSON>` with its sequence_number: response.created, "
        "response.in_progress, response.output_item.added, response.content_part.added, "
        "response.output_text.delta…, response.output_text.done, response.content_part.done, "
        "response.output_item.done (function_call items: "
        "response.function_call_arguments.delta/done), then response.completed or "
        "response.incomplete; an error after the stream began is one `error` event."
    ),
}


def _responses_op() -> Json:
    operation = _op(
        "Create a response (JSON or SSE)", _json_body(RESPONSES_REQUEST), ok="OpenAI's Response"
    )
    operation["responses"]["200"]["content"]["text/event-stream"] = {"schema": RESPONSES_STREAM}
    return operation


def _path_param(name: str) -> Json:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def document() -> Json:
    upload = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {
                            "enum": [
                                "user_data",
                                "assistants",
                                "batch",
                                "vision",
                                "fine-tune",
                                "evals",
                            ]
                        },
                    },
                }
            }
        },
    }
    paths: Json = {
        "/v1/chat/completions": {
            "post": _op(
                "Chat completion (JSON or SSE)",
                _json_body(CHAT_REQUEST),
                ok="OpenAI's CreateChatCompletionResponse",
                stream="CreateChatCompletionStreamResponse",
            )
        },
        "/v1/completions": {
            "post": _op(
                "Text completion (JSON or SSE)",
                _json_body(COMPLETION_REQUEST),
                ok="OpenAI's CreateCompletionResponse",
                stream="CreateCompletionResponse",
            )
        },
        "/v1/embeddings": {
            "post": _op(
                "Embeddings",
                _json_body(EMBEDDINGS_REQUEST),
                ok="OpenAI's CreateEmbeddingResponse",
            )
        },
        "/v1/responses": {"post": _responses_op()},
        "/v1/responses/{response_id}": {
            "get": {**_op("A stored response"), "parameters": [_path_param("response_id")]},
            "delete": {
                **_op("Delete a stored response"),
                "parameters": [_path_param("response_id")],
            },
        },
        "/v1/responses/{response_id}/input_items": {
            "get": {
                **_op("A stored response's input items, paged (ResponseItemList)"),
                "parameters": [_path_param("response_id")],
            }
        },
        "/v1/models": {"get": _op("Models this key may use")},
        "/v1/models/{model_id}": {
            "get": {**_op("One model"), "parameters": [_path_param("model_id")]}
        },
        "/v1/files": {"post": _op("Upload a file", upload), "get": _op("List the team's files")},
        "/v1/files/{file_id}": {
            "get": {**_op("One file"), "parameters": [_path_param("file_id")]},
            "delete": {**_op("Delete a file"), "parameters": [_path_param("file_id")]},
        },
        "/v1/files/{file_id}/content": {
            "get": {**_op("File bytes"), "parameters": [_path_param("file_id")]}
        },
        "/v1/batches": {
            "post": _op("Create a batch", _json_body(BATCH_REQUEST), ok="OpenAI's Batch"),
            "get": {
                **_op("List the team's batches", ok="OpenAI's ListBatchesResponse"),
                "parameters": [
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                ],
            },
        },
        "/v1/batches/{batch_id}": {
            "get": {
                **_op("One batch", ok="OpenAI's Batch"),
                "parameters": [_path_param("batch_id")],
            }
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": {
                **_op("Cancel a batch", ok="OpenAI's Batch"),
                "parameters": [_path_param("batch_id")],
            }
        },
        "/v1/admin/keys": {
            "post": _op("Create a key (admin)", _json_body({**KEY_BODY, "required": ["name"]})),
            "get": _op("List keys (admin)"),
        },
        "/v1/admin/keys/{id}": {
            "get": {**_op("One key (admin)"), "parameters": [_path_param("id")]},
            "patch": {
                **_op("Change a key (admin)", _json_body(KEY_BODY)),
                "parameters": [_path_param("id")],
            },
            "delete": {**_op("Revoke a key (admin)"), "parameters": [_path_param("id")]},
        },
        "/v1/admin/teams/{team}": {
            "put": {
                **_op(
                    "Set team limits (admin)",
                    _json_body(
                        {
                            "type": "object",
                            "properties": {"limits": LIMITS},
                            "additionalProperties": False,
                        }
                    ),
                ),
                "parameters": [_path_param("team")],
            },
            "get": {**_op("Team limits (admin)"), "parameters": [_path_param("team")]},
        },
        "/v1/admin/usage": {
            "get": {
                **_op("Usage totals (admin)"),
                "parameters": [
                    {"name": n, "in": "query", "schema": s}
                    for n, s in (
                        ("key_id", {"type": "string"}),
                        ("team", {"type": "string"}),
                        ("model", {"type": "string"}),
                        ("batch_id", {"type": "string"}),
                        ("since", {"type": "number"}),
                        ("until", {"type": "number"}),
                        ("group_by", {"enum": ["key", "model", "team"]}),
                    )
                ],
            }
        },
        "/v1/console/session": {"get": _op("The key's own identity, team and limits (any key)")},
        "/v1/console/keys": {
            "get": {
                **_op("Keys of the caller's team, without secrets (admin: every key)"),
                "parameters": [{"name": "team", "in": "query", "schema": {"type": "string"}}],
            }
        },
        "/v1/console/models": {
            "get": _op("The key's models with capabilities, backend and upstream health")
        },
        "/v1/console/usage": {
            "get": {
                **_op("The usage dashboard's report, scoped to the caller's team (any key)"),
                "parameters": [
                    {"name": n, "in": "query", "schema": s}
                    for n, s in (
                        ("since", {"type": "number"}),
                        ("until", {"type": "number"}),
                        ("bucket", {"enum": ["minute", "hour", "day"]}),
                        ("team", {"type": "string"}),
                        ("key_id", {"type": "string"}),
                        ("top", {"type": "integer", "minimum": 1, "maximum": 100}),
                    )
                ],
            }
        },
        "/healthz": {"get": _op("Liveness", security=False)},
        "/readyz": {"get": _op("Readiness of every gRPC dependency", security=False)},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Aqueduct",
            "version": "1",
            "description": (
                "OpenAI-compatible gateway. Every /v1 route is also served without the /v1 prefix."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


DOCUMENT = orjson.dumps(document())
