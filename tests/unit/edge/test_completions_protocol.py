"""/completions parsing and rendering: pure functions, no servers."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aqueduct.inference.v1 import inference_pb2 as pb

from edge.completions_protocol import (
    ChoiceLogprobs,
    CompletionWriter,
    completion_json,
    parse_completion_request,
)
from edge.errors import ApiError
from edge.rendering import ChoiceText, Completion

BASE: dict[str, Any] = {"model": "m", "prompt": "hi"}


def test_prompt_forms() -> None:
    def prompts(prompt: object) -> list[tuple[str, object]]:
        request = parse_completion_request({"model": "m", "prompt": prompt}).request
        return [
            ("text", p.text) if p.HasField("text") else ("tokens", list(p.tokens.ids))
            for p in request.prompts
        ]

    assert prompts("a") == [("text", "a")]
    assert prompts(["a", "b"]) == [("text", "a"), ("text", "b")]
    assert prompts([1, 2]) == [("tokens", [1, 2])]
    assert prompts([[1], [2, 3]]) == [("tokens", [1]), ("tokens", [2, 3])]
    assert prompts(None) == [("text", "")]


def test_defaults_and_fields() -> None:
    call = parse_completion_request(BASE)
    assert call.request.sampling.max_tokens == 16 and not call.stream and call.logprobs is None
    call = parse_completion_request(
        {
            **BASE,
            "max_completion_tokens": 9,
            "n": 2,
            "best_of": 3,
            "logprobs": 0,
            "echo": True,
            "suffix": "s",
            "seed": 4,
            "stop": "x",
            "user": "u",
            "metadata": {"k": "v"},
            "models": ["b"],
            "logit_bias": {"5": 1},
        }
    )
    r = call.request
    assert (r.sampling.max_tokens, r.sampling.n, r.best_of) == (9, 2, 3)
    assert call.logprobs == 0 and r.sampling.logprobs and r.sampling.top_logprobs == 0
    assert r.echo and r.suffix == "s" and r.sampling.seed == 4 and list(r.sampling.stops) == ["x"]
    assert (
        r.user == "u" and list(r.fallback_models) == ["b"] and dict(r.sampling.logit_bias) == {5: 1}
    )
    stream = parse_completion_request(
        {**BASE, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert stream.stream and stream.include_usage


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x"}, "model"),
        ({**BASE, "prompt": []}, "prompt"),
        ({**BASE, "prompt": [1, "a"]}, "prompt"),
        ({**BASE, "prompt": [[1], []]}, "prompt"),
        ({**BASE, "prompt": [True]}, "prompt"),
        ({**BASE, "prompt": [-1]}, "prompt"),
        ({**BASE, "prompt": 5}, "prompt"),
        ({**BASE, "logprobs": 6}, "logprobs"),
        ({**BASE, "logprobs": True}, "logprobs"),
        ({**BASE, "best_of": 1, "n": 2}, "best_of"),
        ({**BASE, "best_of": 21}, "best_of"),
        ({**BASE, "best_of": 2, "stream": True}, "best_of"),
        ({**BASE, "echo": "yes"}, "echo"),
        ({**BASE, "suffix": 1}, "suffix"),
        ({**BASE, "metadata": []}, "metadata"),
        ({**BASE, "temperature": 2.1}, "temperature"),
        ({**BASE, "top_p": -0.1}, "top_p"),
        ({**BASE, "frequency_penalty": 2.1}, "frequency_penalty"),
        ({**BASE, "stream_options": {}}, "stream_options"),
        ({**BASE, "tools": [{"type": "function"}]}, "tools"),
        ({**BASE, "n": 129}, "n"),
    ],
)
def test_invalid_fields_are_named(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_completion_request(body)
    assert caught.value.status == 400
    assert caught.value.param == param


def summary(*reasons: int) -> pb.Summary:
    return pb.Summary(
        choice_ends=[pb.ChoiceEnd(choice_index=i, finish_reason=r) for i, r in enumerate(reasons)],
        usage=pb.Usage(prompt_tokens=4, completion_tokens=6),
        model="served",
    )


def lp(token: str, logprob: float, *top: tuple[str, float]) -> pb.TokenLogprob:
    return pb.TokenLogprob(
        token=token,
        logprob=logprob,
        top_logprobs=[pb.TopLogprob(token=t, logprob=p) for t, p in top],
    )


def test_completion_json_shape_with_logprobs() -> None:
    choices = {
        1: ChoiceText(["x"], [lp("x", -1.0)]),
        0: ChoiceText(["He", "llo"], [lp("He", -0.5, ("He", -0.5), ("A", -2.0)), lp("llo", 0)]),
    }
    body = orjson.loads(
        completion_json(
            Completion("cmpl-1", 7, "alias"),
            choices,
            summary(pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH),
            logprobs=True,
        )
    )
    assert body["object"] == "text_completion" and body["model"] == "served"
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
    first, second = body["choices"]
    assert (first["index"], first["text"], first["finish_reason"]) == (0, "Hello", "stop")
    assert first["logprobs"] == {
        "tokens": ["He", "llo"],
        "token_logprobs": [-0.5, 0.0],
        "top_logprobs": [{"He": -0.5, "A": -2.0}, {}],
        "text_offset": [0, 2],
    }
    assert (second["index"], second["finish_reason"]) == (1, "length")


def test_completion_json_without_logprobs_has_null() -> None:
    body = orjson.loads(
        completion_json(
            Completion("c", 1, "m"), {0: ChoiceText(["a"], [])}, summary(1), logprobs=False
        )
    )
    assert body["choices"][0]["logprobs"] is None


def test_logprob_offsets_continue_across_chunks_and_count_echo() -> None:
    offsets = ChoiceLogprobs()
    offsets.add("Prompt ", [])  # echoed prompt: text without tokens
    part = offsets.add("ab", [lp("a", -1), lp("b", -1)])
    assert part["text_offset"] == [7, 8]
    assert offsets.add("c", [lp("c", -1)])["text_offset"] == [9]


def events(raw: bytes) -> list[Any]:
    out = []
    for block in raw.split(b"\n\n"):
        if block:
            data = block[len(b"data: ") :]
            out.append(data.decode() if data == b"[DONE]" else orjson.loads(data))
    return out


def test_stream_one_chunk_per_delta_then_finishes_usage_done() -> None:
    writer = CompletionWriter(Completion("cmpl-1", 1, "m"), include_usage=True, logprobs=False)
    batch = pb.DeltaBatch(
        deltas=[
            pb.Delta(choice_index=2, content="x"),
            pb.Delta(choice_index=0, content="a"),
            pb.Delta(choice_index=2, content="y"),
        ]
    )
    out = events(writer.deltas(batch) + writer.finish(summary(1, 1, 2)))
    assert [(c["choices"][0]["index"], c["choices"][0]["text"]) for c in out[:3]] == [
        (2, "x"),
        (0, "a"),
        (2, "y"),
    ]
    assert [c["choices"][0]["finish_reason"] for c in out[3:6]] == ["stop", "stop", "length"]
    assert out[6]["choices"] == [] and out[6]["usage"]["total_tokens"] == 10
    assert out[7] == "[DONE]"
    assert all(e["object"] == "text_completion" for e in out[:7])
    assert all(e["usage"] is None for e in out[:6])
