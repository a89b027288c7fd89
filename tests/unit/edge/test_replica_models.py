"""The console's models list over several inference replicas: each replica's
upstream health merged (edge/replica_models.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from aqueduct.inference.v1 import inference_pb2 as ipb

from edge.replica_models import ReplicaModels, merged


def model(model_id: str, *upstreams: tuple[str, str, int, int]) -> ipb.Model:
    return ipb.Model(
        id=model_id,
        backend="openai",
        upstreams=[
            ipb.UpstreamHealth(label=label, state=state, in_flight=busy, failures=failed)
            for label, state, busy, failed in upstreams
        ],
    )


def test_counts_are_summed_and_the_worst_state_wins() -> None:
    first = [model("m", ("a", "closed", 1, 0), ("b", "closed", 0, 2)), model("local")]
    second = [model("m", ("a", "open", 2, 3), ("b", "half_open", 1, 1)), model("local")]
    third = [model("m", ("a", "half_open", 0, 1), ("b", "closed", 0, 0)), model("local")]
    [m, local] = merged([first, second, third])
    assert [(u.label, u.state, u.in_flight, u.failures) for u in m.upstreams] == [
        ("a", "open", 3, 4),
        ("b", "half_open", 1, 3),
    ]
    assert local.id == "local" and not local.upstreams
    assert first[0].upstreams[0].in_flight == 1  # the answers themselves are left alone


def test_one_answer_is_itself() -> None:
    only = [model("m", ("a", "half_open", 4, 5))]
    assert merged([only]) == only


class Stub:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    async def ListModels(self, request: Any, timeout: float, metadata: Any) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        return ipb.ListModelsResponse(models=self.answer)


def down() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"
    )


def test_a_replica_that_does_not_answer_is_left_out() -> None:
    up = [model("m", ("a", "closed", 1, 1))]
    replicas = ReplicaModels([Stub(down()), Stub(up), Stub(up)])  # type: ignore[list-item]
    [m] = asyncio.run(replicas.list(1.0, ()))
    assert (m.upstreams[0].in_flight, m.upstreams[0].failures) == (2, 2)


def test_no_replica_answering_is_the_first_ones_error() -> None:
    replicas = ReplicaModels([Stub(down()), Stub(down())])  # type: ignore[list-item]
    with pytest.raises(grpc.aio.AioRpcError):
        asyncio.run(replicas.list(1.0, ()))
