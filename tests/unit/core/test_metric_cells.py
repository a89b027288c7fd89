"""The hot-path metrics export exactly what prometheus-client's own would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from core.metric_cells import Counters, Histograms

BUCKETS = (0.01, 0.1, 1.0, 10.0)
VALUES = (0.0, 0.01, 0.010001, 0.5, 1.0, 3.0, 10.0, 11.0, 1e9)


def exposition(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if "_created" not in line)


def test_counters_and_histograms_match_the_library() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counters = Counters("x_requests", "Requests.", ["route", "code"], ours)
    counter = Counter("x_requests", "Requests.", ["route", "code"], registry=theirs)
    histograms = Histograms("x_seconds", "Time.", ["route"], BUCKETS, ours)
    histogram = Histogram("x_seconds", "Time.", ["route"], buckets=BUCKETS, registry=theirs)
    for i, value in enumerate(VALUES):
        route = "/a" if i % 2 else "/b"
        counters.labels(route, "2xx").inc()
        counter.labels(route, "2xx").inc()
        counters.labels(route, "tokens").inc(value)
        counter.labels(route, "tokens").inc(value)
        histograms.labels(route).observe(value)
        histogram.labels(route).observe(value)
    assert exposition(ours) == exposition(theirs)
    # /a observed 0.01 itself (and nothing less): a bound includes its value.
    assert 'x_seconds_bucket{le="0.01",route="/a"} 1.0' in exposition(ours)


def test_a_family_without_samples_exports_only_its_help_and_type() -> None:
    registry = CollectorRegistry()
    Histograms("x_seconds", "Time.", ["route"], BUCKETS, registry)
    assert exposition(registry) == ["# HELP x_seconds Time.", "# TYPE x_seconds histogram"]
