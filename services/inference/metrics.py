"""Inference's own metrics, read from the models served now when scraped:
each upstream's attempts, failures, ejections and circuit state, retries per
model, and the bundled model's queue.

Upstreams are labelled by model and URL (scheme, host, port, path; never
credentials: Upstream.label): both come from the operator's models file, so the set is bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.inference.forwarded import ForwardedModel
from services.inference.openai_backend import OpenAIBackend
from services.inference.registry import ModelRegistry

if TYPE_CHECKING:  # imported only where the models file has a local model
    from services.inference.local_model import LocalChatModel

CIRCUIT_STATES = ("closed", "open", "half_open")


class InferenceCollector(Collector):
    def __init__(self, registry: Callable[[], ModelRegistry]) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "upstream"]
        attempts = CounterMetricFamily(
            "aqueduct_upstream_attempts", "Requests sent to an upstream.", labels=labels
        )
        failures = CounterMetricFamily(
            "aqueduct_upstream_failures",
            "Upstream attempts that failed (refused, 5xx, broken stream, timeout).",
            labels=labels,
        )
        ejections = CounterMetricFamily(
            "aqueduct_upstream_ejections",
            "Times an upstream was taken out of rotation after failing.",
            labels=labels,
        )
        in_flight = GaugeMetricFamily(
            "aqueduct_upstream_in_flight", "Requests an upstream is serving now.", labels=labels
        )
        circuit = GaugeMetricFamily(
            "aqueduct_upstream_circuit_state",
            "1 for an upstream's circuit state now: closed (serving), open (ejected), "
            "half_open (the next request probes it).",
            labels=[*labels, "state"],
        )
        retries = CounterMetricFamily(
            "aqueduct_upstream_retries",
            "Attempts on another upstream after a first one failed.",
            labels=["model"],
        )
        queued = GaugeMetricFamily(
            "aqueduct_local_queue_depth",
            "Requests waiting for the bundled model.",
            labels=["model"],
        )
        active = GaugeMetricFamily(
            "aqueduct_local_active_generations",
            "Generations the bundled model runs now.",
            labels=["model"],
        )
        for served in self.registry().models:
            backend, model = served.backend, served.spec.name
            if isinstance(backend, OpenAIBackend):
                retries.add_metric([model], backend.retries)
                for replica in backend.balancer.replicas:
                    at = [model, replica.target.label]
                    attempts.add_metric(at, replica.attempts)
                    failures.add_metric(at, replica.failed_total)
                    ejections.add_metric(at, replica.ejections)
                    in_flight.add_metric(at, replica.outstanding)
                    state = backend.balancer.state(replica)
                    for name in CIRCUIT_STATES:
                        circuit.add_metric([*at, name], 1.0 if name == state else 0.0)
            elif served.spec.backend == "local" and not isinstance(backend, ForwardedModel):
                # The bundled model, run here (not forwarded to the worker that runs it).
                waiting = cast("LocalChatModel", backend).in_flight
                running = min(waiting, 1)  # one generation at a time
                active.add_metric([model], running)
                queued.add_metric([model], waiting - running)
        yield from (attempts, failures, ejections, in_flight, circuit, retries, queued, active)
