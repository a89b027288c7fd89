"""POST /v1/embeddings bodies: what is accepted, what is refused and where."""

from __future__ import annotations

import base64
import struct

import orjson
import pytest
from aqueduct.inference.v1 import inference_pb2 as pb

from edge.embeddings_protocol import embeddings_json, parse_embeddings_request
from edge.errors import ApiError


def test_string_strings_and_token_arrays() -> None:
    one = parse_embeddings_request({"model": "m", "input": "hi"})
    assert [i.text for i in one.request.inputs] == ["hi"] and not one.base64
    many = parse_embeddings_request(
        {"model": "m", "input": ["a", "b"], "encoding_format": "base64"}
    )
    assert [i.text for i in many.request.inputs] == ["a", "b"] and many.base64
    tokens = parse_embeddings_request({"model": "m", "input": [1, 2, 3]})
    assert [list(i.tokens.ids) for i in tokens.request.inputs] == [[1, 2, 3]]
    arrays = parse_embeddings_request({"model": "m", "input": [[1], [2, 3]]})
    assert [list(i.tokens.ids) for i in arrays.request.inputs] == [[1], [2, 3]]


def test_options_reach_the_request() -> None:
    call = parse_embeddings_request(
        {
            "model": "m",
            "input": "x",
            "dimensions": 64,
            "user": "u",
            "input_type": "document",
            "models": ["n"],
        }
    )
    request = call.request
    assert (request.dimensions, request.user, request.input_type) == (64, "u", "passage")
    assert list(request.fallback_models) == ["n"]
    assert not parse_embeddings_request({"model": "m", "input": "x"}).request.HasField("dimensions")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": ""}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": ["a", ""]}, "input[1]"),
        ({"model": "m", "input": ["a", 1]}, "input"),
        ({"model": "m", "input": [[1], []]}, "input[1]"),
        ({"model": "m", "input": [-1]}, "input"),
        ({"model": "m", "input": [True]}, "input"),
        ({"model": "m", "input": ["x"] * 2049}, "input"),
        ({"model": "m", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "m", "input": "x", "dimensions": "8"}, "dimensions"),
        ({"model": "m", "input": "x", "user": 5}, "user"),
        ({"model": "m", "input": "x", "input_type": "search"}, "input_type"),
        ({"model": "m", "input": "x", "models": "n"}, "models"),
    ],
)
def test_bad_bodies_name_the_field(body: dict[str, object], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_embeddings_request(body)
    assert caught.value.status == 400 and caught.value.param == param


def test_rendering_float_and_base64() -> None:
    response = pb.CreateEmbeddingsResponse(
        embeddings=[pb.Embedding(index=0, values=[0.5, -2.0])],
        usage=pb.Usage(prompt_tokens=3),
        model="m",
    )
    floats = orjson.loads(embeddings_json(response, as_base64=False))
    assert floats == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -2.0]}],
        "model": "m",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    packed = orjson.loads(embeddings_json(response, as_base64=True))["data"][0]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(packed)) == (0.5, -2.0)
