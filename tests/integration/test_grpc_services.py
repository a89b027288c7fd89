"""The gRPC services as internal callers see them: statuses, details, health."""

from __future__ import annotations

import grpc
import pytest
from aqueduct.auth.v1 import auth_pb2, auth_pb2_grpc
from aqueduct.inference.v1 import inference_pb2 as pb
from aqueduct.inference.v1 import inference_pb2_grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from tests.stack import ADMIN_KEY, Stack

MODEL = "smollm2-135m-instruct"


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def test_verify_key_returns_the_principal(stack: Stack) -> None:
    with grpc.insecure_channel(stack.address("auth")) as channel:
        answer = auth_pb2_grpc.AuthServiceStub(channel).VerifyKey(
            auth_pb2.VerifyKeyRequest(key=ADMIN_KEY), timeout=5
        )
    assert answer.principal.admin
    assert answer.principal.key_id.startswith("key_")
    assert list(answer.principal.allowed_models) == []


def test_verify_unknown_key_is_unauthenticated_with_reason(stack: Stack) -> None:
    with grpc.insecure_channel(stack.address("auth")) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.VerifyKey(auth_pb2.VerifyKeyRequest(key="sk-aq-unknown"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert error_info(caught.value).reason == "KEY_UNKNOWN"


def test_stream_carries_deltas_then_one_summary(stack: Stack) -> None:
    request = pb.StreamChatCompletionRequest(
        model=MODEL,
        messages=[pb.ChatMessage(role="user", content="Say hello.")],
        sampling=pb.SamplingParams(max_tokens=8, temperature=0),
    )
    with grpc.insecure_channel(stack.address("inference")) as channel:
        messages = list(
            inference_pb2_grpc.InferenceServiceStub(channel).StreamChatCompletion(
                request, timeout=30
            )
        )
    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds[-1] == "summary" and kinds.count("summary") == 1
    assert set(kinds[:-1]) == {"deltas"}
    assert messages[0].deltas.model == MODEL
    summary = messages[-1].summary
    assert summary.model == MODEL
    assert summary.usage.completion_tokens == 8
    assert summary.choice_ends[0].finish_reason == pb.FINISH_REASON_LENGTH
    assert "".join(d.content for m in messages[:-1] for d in m.deltas.deltas)


def test_the_unary_method_answers_with_the_stream_s_text_and_summary_in_one_message(
    stack: Stack,
) -> None:
    request = pb.StreamChatCompletionRequest(
        model=MODEL,
        messages=[pb.ChatMessage(role="user", content="Say hello.")],
        sampling=pb.SamplingParams(max_tokens=8, temperature=0),
    )
    with grpc.insecure_channel(stack.address("inference")) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        streamed = list(stub.StreamChatCompletion(request, timeout=30))
        whole = stub.ChatCompletion(pb.ChatCompletionRequest(request=request), timeout=30)
        with pytest.raises(grpc.RpcError) as caught:
            unknown = pb.StreamChatCompletionRequest(model="nope", messages=request.messages)
            stub.ChatCompletion(pb.ChatCompletionRequest(request=unknown), timeout=10)
    text = "".join(d.content for m in streamed[:-1] for d in m.deltas.deltas)
    assert "".join(d.content for d in whole.deltas.deltas) == text
    assert whole.deltas.model == MODEL
    assert whole.summary == streamed[-1].summary
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert error_info(caught.value).reason == "MODEL_NOT_FOUND"


def test_unknown_model_is_not_found_with_param(stack: Stack) -> None:
    request = pb.StreamChatCompletionRequest(
        model="nope", messages=[pb.ChatMessage(role="user", content="hi")]
    )
    with grpc.insecure_channel(stack.address("inference")) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.StreamChatCompletion(request, timeout=10))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    info = error_info(caught.value)
    assert info.reason == "MODEL_NOT_FOUND"
    assert info.metadata["param"] == "model"


@pytest.mark.parametrize("service", ["auth", "files", "inference"])
def test_health_serving_and_reflection(stack: Stack, service: str) -> None:
    with grpc.insecure_channel(stack.address(service)) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(
            reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        )
    names = {s.name for s in answers[0].list_services_response.service}
    assert f"aqueduct.{service}.v1.{service.capitalize()}Service" in names
    assert "grpc.health.v1.Health" in names


def test_readyz_reports_every_dependency(stack: Stack) -> None:
    import httpx

    answer = httpx.get(f"{stack.base_url}/readyz")
    assert answer.status_code == 200
    assert answer.json()["status"] == "ready"
    assert answer.json()["services"] == {
        "auth": "SERVING",
        "files": "SERVING",
        "inference": "SERVING",
    }
    assert answer.json()["dependencies"] == {"auth.limits": "SERVING", "auth.database": "SERVING"}
    assert httpx.get(f"{stack.base_url}/healthz").status_code == 200
