"""The edge's Prometheus metrics, served at GET /metrics.

Named after the OpenTelemetry GenAI semantic conventions where they exist
(`gen_ai.server.request.duration`, `gen_ai.server.time_to_first_token`,
`gen_ai.server.time_per_output_token`, `gen_ai.client.token.usage`, in
Prometheus form), `aqueduct_*` for the rest. Labels stay bounded: models and
teams are open sets (clients name models, admins name teams), so each keeps its
first MAX_LABEL_VALUES values and counts the rest as "other"; keys are never a
label.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.metric_cells import Counters, Histograms
from edge.auth import Authenticator
from edge.limits import Limiter, Usage
from edge.readiness import Readiness

MAX_LABEL_VALUES = 100
# The semantic conventions' advised buckets.
DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
TPOT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip
TOKEN_BUCKETS = tuple(4**i for i in range(14))  # 1 … 67,108,864


class BoundedLabel:
    """The first `limit` distinct values keep their name; later ones are "other"."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self.limit:
            self._seen.add(value)
            return value
        return "other"


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.model = BoundedLabel()
        self.team = BoundedLabel()
        r = self.registry
        self.requests = Counters(
            "aqueduct_requests",
            "Requests answered, by route, model, status class and team.",
            ["route", "model", "status_class", "team"],
            r,
        )
        self.duration = Histograms(
            "gen_ai_server_request_duration_seconds",
            "Time from the request's arrival to its last byte (admitted requests).",
            ["gen_ai_operation_name", "gen_ai_request_model", "error_type"],
            DURATION_BUCKETS,
            r,
        )
        self.ttft = Histograms(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from the request's arrival to its first token.",
            ["gen_ai_operation_name", "gen_ai_request_model"],
            TTFT_BUCKETS,
            r,
        )
        self.tpot = Histograms(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first.",
            ["gen_ai_operation_name", "gen_ai_request_model"],
            TPOT_BUCKETS,
            r,
        )
        self.token_usage = Histograms(
            "gen_ai_client_token_usage",
            "Tokens per request, by type (input, output).",
            ["gen_ai_operation_name", "gen_ai_request_model", "gen_ai_token_type"],
            TOKEN_BUCKETS,
            r,
        )
        self.tokens = Counters(
            "aqueduct_tokens",
            "Tokens used, by model, team and type (input, output).",
            ["model", "team", "type"],
            r,
        )

    def watch(self, authenticator: Authenticator, limiter: Limiter, readiness: Readiness) -> None:
        """State the edge keeps anyway (plain ints and dicts), read at scrape time:
        nothing on the hot path."""
        self.registry.register(_EdgeState(authenticator, limiter, readiness, self.team))

    def refused(self, route: str, status: int) -> None:
        """A request answered before it was admitted (bad key, bad body, a limit…)."""
        self.requests.labels(route, "", status_class(status), "").inc()

    def finished(self, route: str, operation: str, usage: Usage, team: str) -> None:
        """An admitted request, however it ended."""
        model, team = self.model(usage.model), self.team(team)
        self.requests.labels(route, model, status_class(usage.status), team).inc()
        ended = usage.ended_at or usage.started
        self.duration.labels(operation, model, usage.error_code).observe(ended - usage.started)
        if usage.first_token_at is not None:
            self.ttft.labels(operation, model).observe(usage.first_token_at - usage.started)
            if usage.output_tokens > 1:
                per_token = (ended - usage.first_token_at) / (usage.output_tokens - 1)
                self.tpot.labels(operation, model).observe(per_token)
        for kind, count in (("input", usage.input_tokens), ("output", usage.output_tokens)):
            self.token_usage.labels(operation, model, kind).observe(count)
            if count:
                self.tokens.labels(model, team, kind).inc(count)


class _EdgeState(Collector):
    def __init__(
        self,
        authenticator: Authenticator,
        limiter: Limiter,
        readiness: Readiness,
        team: BoundedLabel,
    ) -> None:
        self.authenticator = authenticator
        self.limiter = limiter
        self.readiness = readiness
        self.team = team

    def collect(self) -> Iterator[Metric]:
        lookups = CounterMetricFamily(
            "aqueduct_key_cache_lookups",
            "API key lookups at the edge: from the cache (hit) or asked of auth (miss).",
            labels=["result"],
        )
        lookups.add_metric(["hit"], self.authenticator.hits)
        lookups.add_metric(["miss"], self.authenticator.misses)
        yield lookups
        yield GaugeMetricFamily(
            "aqueduct_key_watch_up",
            "1 while the edge is subscribed to auth's key events (cached keys trusted longer).",
            value=float(self.authenticator.watching),
        )
        limited = CounterMetricFamily(
            "aqueduct_rate_limited",
            "Requests refused by a limit (429), by limit name, scope and team.",
            labels=["limit", "scope", "team"],
        )
        by_team: dict[tuple[str, str, str], int] = {}
        for (limit, scope, team), count in list(self.limiter.rate_limited.items()):
            key = (limit, scope, self.team(team))
            by_team[key] = by_team.get(key, 0) + count
        for labels, count in by_team.items():
            limited.add_metric(list(labels), count)
        yield limited
        admitted = CounterMetricFamily(
            "aqueduct_limit_admissions",
            "Requests admitted, by path: leased (from a block of quota this edge holds), "
            "per_request (a reserve call to auth each) or unlimited (no limits, no call).",
            labels=["path"],
        )
        for path, count in list(self.limiter.admissions.items()):
            admitted.add_metric([path], count)
        yield admitted
        yield GaugeMetricFamily(
            "aqueduct_settles_pending",
            "Settles (limits back, ledger rows) waiting for auth to take them.",
            value=self.limiter.settles_pending,
        )
        up = GaugeMetricFamily(
            "aqueduct_dependency_up",
            "1 while a service the edge calls (auth, files, inference) is SERVING, or a "
            "store behind one answers (auth.limits: Redis, auth.database) as that "
            "service's health reports it; polled every 2 s.",
            labels=["dependency"],
        )
        readiness = self.readiness
        for name, state in sorted({**readiness.services, **readiness.stores}.items()):
            up.add_metric([name], float(state == "SERVING"))
        yield up
        changes = CounterMetricFamily(
            "aqueduct_dependency_transitions",
            "Changes of a service's or store's state as the edge polls it, by the state "
            "it changed to (SERVING, NOT_SERVING, UNAVAILABLE: unreachable, ...).",
            labels=["dependency", "to"],
        )
        for (name, state), count in sorted(readiness.transitions.items()):
            changes.add_metric([name, state], count)
        yield changes
        yield CounterMetricFamily(
            "aqueduct_settles_dropped",
            "Settles dropped because auth was unreachable and the queue was full.",
            value=self.limiter.settles_dropped,
        )
