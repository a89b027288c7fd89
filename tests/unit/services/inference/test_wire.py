"""Domain values back into the gRPC contract (services.inference.wire): what a
worker forwarding a local model sends is what it was sent, and what comes back
is the events the model produced."""

from __future__ import annotations

import numpy as np
from aqueduct.inference.v1 import inference_pb2 as pb

from services.inference import convert, wire
from services.inference.generation import (
    Delta,
    Finish,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
)


def full_sampling() -> pb.SamplingParams:
    return pb.SamplingParams(
        max_tokens=7,
        temperature=0.5,
        top_p=0.25,
        stops=["\n", "END"],
        seed=42,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        n=2,
        logprobs=True,
        top_logprobs=3,
        logit_bias={11: 2.5, 5: -100.0},
        response_format=pb.ResponseFormat(
            type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
            json_schema='{"type": "object"}',
            strict=True,
            name="thing",
        ),
    )


def test_a_chat_request_survives_the_round_trip() -> None:
    sent = pb.StreamChatCompletionRequest(
        model="m",
        messages=[
            pb.ChatMessage(role="system", content="Be brief.", name="rules"),
            pb.ChatMessage(
                role="user",
                parts=[
                    pb.ContentPart(text="look"),
                    pb.ContentPart(image=pb.ImagePart(url="https://x/a.png", detail="low")),
                    pb.ContentPart(
                        image=pb.ImagePart(data=b"\x89PNG", media_type="image/png", filename="a")
                    ),
                    pb.ContentPart(audio=pb.AudioPart(data=b"RIFF", format="wav")),
                ],
            ),
            pb.ChatMessage(
                role="assistant",
                tool_calls=[pb.ToolCall(id="c1", name="f", arguments='{"x": 1}')],
            ),
            pb.ChatMessage(role="tool", content="1", tool_call_id="c1"),
        ],
        sampling=full_sampling(),
        user="u",
        fallback_models=["b"],
        allowed_models=["m", "b"],
        tools_json="[]",
        tool_choice_json='"auto"',
        parallel_tool_calls=False,
        no_configured_fallbacks=True,
    )
    assert wire.chat_message(convert.chat_request(sent)) == sent


def test_a_grammar_and_unset_sampling_survive_the_round_trip() -> None:
    grammar = pb.StreamChatCompletionRequest(
        model="m",
        messages=[pb.ChatMessage(role="user", content="hi")],
        sampling=pb.SamplingParams(
            n=1,
            response_format=pb.ResponseFormat(
                type=pb.RESPONSE_FORMAT_TYPE_GRAMMAR, grammar='root ::= "a"', grammar_syntax="gbnf"
            ),
        ),
    )
    back = wire.chat_message(convert.chat_request(grammar))
    assert back == grammar
    for unset in ("max_tokens", "temperature", "top_p", "seed"):
        assert not back.sampling.HasField(unset)
    assert not back.HasField("parallel_tool_calls")


def test_a_completion_and_an_embedding_request_survive_the_round_trip() -> None:
    completion = pb.StreamCompletionRequest(
        model="m",
        prompts=[pb.EmbeddingInput(text="a"), pb.EmbeddingInput(tokens=pb.TokenIds(ids=[1, 2]))],
        sampling=full_sampling(),
        suffix="z",
        echo=True,
        best_of=3,
        user="u",
        fallback_models=["b"],
        allowed_models=["m"],
    )
    assert wire.completion_message(convert.completion_request(completion)) == completion
    embedding = pb.CreateEmbeddingsRequest(
        model="e",
        inputs=[pb.EmbeddingInput(text="a"), pb.EmbeddingInput(tokens=pb.TokenIds(ids=[3]))],
        dimensions=64,
        user="u",
        fallback_models=["f"],
        allowed_models=["e"],
        input_type="passage",
        no_configured_fallbacks=True,
    )
    assert wire.embed_message(convert.embed_request(embedding)) == embedding


def test_stream_messages_become_the_events_they_were_made_from() -> None:
    delta = Delta(
        1,
        "hé",
        (TokenLogprob("h", -0.5, b"h", (TopLogprob("h", -0.5, b"h"), TopLogprob("x", -2, b"x"))),),
        (ToolCallDelta(0, "c1", "f", '{"a'),),
        tokens=2,
    )
    batch = pb.StreamChatCompletionResponse(
        deltas=pb.DeltaBatch(deltas=[convert.delta_message(delta)], model="m")
    )
    assert wire.event(batch) == [delta]
    finish = Finish({0: "stop", 1: "length"}, 12, 34)
    summary = pb.StreamCompletionResponse(summary=convert.summary_message(finish, "m"))
    assert wire.event(summary) == finish


def test_embeddings_come_back_as_the_same_float32_vectors() -> None:
    vectors = np.array([[0.1, -0.2, 0.3], [1e-8, 2.0, -3.5]], dtype=np.float32)
    answer = pb.CreateEmbeddingsResponse(
        embeddings=[pb.Embedding(index=i, values=row.tolist()) for i, row in enumerate(vectors)],
        usage=pb.Usage(prompt_tokens=5),
    )
    back = wire.embeddings(answer)
    assert back.prompt_tokens == 5
    assert all(row.typecode == "f" for row in back.vectors)  # float32 rows (array("f"))
    assert [row.tolist() for row in back.vectors] == vectors.tolist()
