"""The console's models list, with upstream health from every inference replica.

Each inference replica (a `make run` inference worker, or a replica listed in
AQUEDUCT_INFERENCE_ADDR) keeps its own upstream circuit breakers, so one
ListModels answer is one replica's view, and over the balanced channel it
would be a different replica's on each refresh. So with several addresses the
console asks each replica on a channel of its own and merges the answers: an
upstream's requests in flight and failures are summed, and its state is the
worst any replica reports ("open" when at least one has ejected it,
"half_open" when one is probing it, "closed" when every one sends it
requests). A replica that does not answer is left out; none answering is the
first one's error. With one address it is the one call it always was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aqueduct.inference.v1 import inference_pb2 as ipb

if TYPE_CHECKING:
    from aqueduct.inference.v1.inference_pb2_grpc import InferenceServiceAsyncStub

# Worst last: a merged state is the highest any replica reports.
SEVERITY = {"closed": 0, "half_open": 1, "open": 2}


class ReplicaModels:
    def __init__(self, stubs: Sequence[InferenceServiceAsyncStub]) -> None:
        self.stubs = list(stubs)

    async def list(self, timeout: float, metadata: tuple[tuple[str, str], ...]) -> list[ipb.Model]:
        asked = ipb.ListModelsRequest()
        answers: list[Any] = await asyncio.gather(
            *(s.ListModels(asked, timeout=timeout, metadata=metadata) for s in self.stubs),
            return_exceptions=True,
        )
        listed = [list(a.models) for a in answers if isinstance(a, ipb.ListModelsResponse)]
        if not listed:
            raise answers[0]
        return merged(listed)


def merged(answers: list[list[ipb.Model]]) -> list[ipb.Model]:
    """The first answer's models, each upstream's health summed over every answer."""
    models = [ipb.Model() for _ in answers[0]]
    for model, first in zip(models, answers[0], strict=True):
        model.CopyFrom(first)
    by_upstream = {(m.id, u.label): u for m in models for u in m.upstreams}
    for answer in answers[1:]:
        for other in answer:
            for health in other.upstreams:
                mine = by_upstream.get((other.id, health.label))
                if mine is None:
                    continue  # a replica that loaded another models file: its own view
                mine.in_flight += health.in_flight
                mine.failures += health.failures
                if SEVERITY.get(health.state, 0) > SEVERITY.get(mine.state, 0):
                    mine.state = health.state
    return models
