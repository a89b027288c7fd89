"""The web console's reads, for any key: who am I, my team's keys, models, usage.

An admin key reads every team; any other key only its own (auth decides:
another team is 403, a key outside the team 404). Key management stays on the
admin API (edge/admin.py), which answers 403 to non-admin keys.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import grpc
from aqueduct.auth.v1 import auth_pb2 as pb
from aqueduct.inference.v1 import inference_pb2 as ipb
from starlette.requests import Request
from starlette.responses import Response

from edge.admin import key_json, limits_json
from edge.auth import Authenticator
from edge.errors import from_rpc_error, invalid
from edge.http import json_response, request_id
from edge.replica_models import ReplicaModels

if TYPE_CHECKING:
    from aqueduct.auth.v1.auth_pb2_grpc import AdminServiceAsyncStub

TIMEOUT_S = 10.0
BUCKETS = {
    "minute": pb.USAGE_BUCKET_MINUTE,
    "hour": pb.USAGE_BUCKET_HOUR,
    "day": pb.USAGE_BUCKET_DAY,
}
USAGE_PARAMS = {"since", "until", "bucket", "team", "key_id", "top"}
DEFAULT_RANGE_S = 86400.0


def summary_json(s: pb.UsageSummary) -> dict[str, Any]:
    return {
        "requests": s.requests,
        "failed_requests": s.errors,
        "input_tokens": s.input_tokens,
        "output_tokens": s.output_tokens,
        "total_tokens": s.input_tokens + s.output_tokens,
        "completion_requests": s.completion_requests,
        "avg_completion_latency_ms": round(s.completion_latency_ms, 1),
        "embedding_requests": s.embedding_requests,
        "avg_embedding_latency_ms": round(s.embedding_latency_ms, 1),
        "avg_ttft_ms": round(s.ttft_ms, 1),
    }


def _groups(rows: Any, field: str) -> list[dict[str, Any]]:
    return [{field: row.name, **summary_json(row.summary)} for row in rows]


def _number(request: Request, name: str, default: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise invalid(name, f"'{name}' must be unix seconds.", "invalid_type") from None
    if not 0 <= value < 2**53:
        raise invalid(name, f"'{name}' must be unix seconds.")
    return value


class ConsoleApi:
    def __init__(
        self,
        authenticator: Authenticator,
        admin: AdminServiceAsyncStub,
        inference: ReplicaModels,
    ) -> None:
        self.authenticator = authenticator
        self.admin = admin
        self.inference = inference  # ListModels from every inference replica

    async def _principal(self, request: Request) -> Any:
        return await self.authenticator.authenticate(request.headers, request_id(request))

    def _metadata(self, request: Request) -> tuple[tuple[str, str], ...]:
        return (
            ("authorization", request.headers["authorization"]),
            ("x-request-id", request_id(request)),
        )

    def _answer(self, request: Request, payload: object) -> Response:
        return json_response(payload, headers={"x-request-id": request_id(request)})

    async def session(self, request: Request) -> Response:
        """GET /v1/console/session: the key's own principal (never its secret)."""
        p = await self._principal(request)
        return self._answer(
            request,
            {
                "object": "console.session",
                "key_id": p.key_id,
                "name": p.name,
                "team": p.team,
                "admin": p.admin,
                "models": list(p.allowed_models) or None,
                "limits": limits_json(p.limits),
                "team_limits": limits_json(p.team_limits),
                "expires_at": p.expires_at or None,
            },
        )

    async def keys(self, request: Request) -> Response:
        """GET /v1/console/keys[?team=]: the team's keys (every key for an admin)."""
        await self._principal(request)
        for name in request.query_params:
            if name != "team":
                raise invalid(name, f"Unknown query parameter '{name}'.", "unknown_field")
        try:
            answer = await self.admin.ListTeamKeys(
                pb.ListTeamKeysRequest(team=request.query_params.get("team", "")),
                timeout=TIMEOUT_S,
                metadata=self._metadata(request),
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "auth") from None
        return self._answer(request, {"object": "list", "data": [key_json(k) for k in answer.keys]})

    async def _models(self, request: Request) -> list[ipb.Model]:
        try:
            return await self.inference.list(5.0, (("x-request-id", request_id(request)),))
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "inference") from None

    async def models(self, request: Request) -> Response:
        """GET /v1/console/models: the models the key may use, their capabilities,
        backend and upstream health (replica addresses for admin keys only)."""
        principal = await self._principal(request)
        allowed = set(principal.allowed_models)
        data = []
        for m in await self._models(request):
            if allowed and m.id not in allowed:
                continue
            data.append(
                {
                    "id": m.id,
                    "object": "model",
                    "root": m.root or m.id,
                    "backend": m.backend,
                    "capabilities": list(m.capabilities),
                    "upstreams": [
                        {
                            "label": u.label if principal.admin else f"upstream {i + 1}",
                            "state": u.state,
                            "in_flight": u.in_flight,
                            "failures": u.failures,
                        }
                        for i, u in enumerate(m.upstreams)
                    ],
                }
            )
        return self._answer(request, {"object": "list", "data": data})

    async def usage(self, request: Request) -> Response:
        """GET /v1/console/usage: the dashboard's report, summed by auth's database.
        `models` lists every configured model the key may use, with zero rows too."""
        principal = await self._principal(request)
        params = request.query_params
        for name in params:
            if name not in USAGE_PARAMS:
                raise invalid(name, f"Unknown query parameter '{name}'.", "unknown_field")
        until = _number(request, "until", time.time())
        since = _number(request, "since", until - DEFAULT_RANGE_S)
        bucket = params.get("bucket", "hour")
        if bucket not in BUCKETS:
            raise invalid("bucket", "'bucket' must be minute, hour or day.")
        top_raw = params.get("top", "10")
        if not top_raw.isdigit() or int(top_raw) < 1:
            raise invalid("top", "'top' must be a whole number from 1 to 100.", "invalid_type")
        query = pb.ReportUsageRequest(
            team=params.get("team", ""),
            key_id=params.get("key_id", ""),
            since=since,
            until=until,
            bucket=BUCKETS[bucket],
            top=min(int(top_raw), 2**31 - 1),
        )
        try:
            report = await self.admin.ReportUsage(
                query, timeout=TIMEOUT_S, metadata=self._metadata(request)
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "auth") from None
        models = _groups(report.models, "model")
        seen = {row["model"] for row in models}
        allowed = set(principal.allowed_models)
        for m in await self._models(request):
            root = m.root or m.id
            if m.id == root and root not in seen and (not allowed or root in allowed):
                models.append({"model": root, **summary_json(pb.UsageSummary())})
                seen.add(root)
        return self._answer(
            request,
            {
                "object": "console.usage_report",
                "since": since,
                "until": until,
                "bucket": bucket,
                "team": report.team or None,
                "key_id": query.key_id or None,
                "summary": summary_json(report.summary),
                "series": [{"start": b.start, **summary_json(b.summary)} for b in report.buckets],
                "top_keys": _groups(report.keys, "key_id"),
                "top_teams": _groups(report.teams, "team"),
                "models": models,
                "users": _groups(report.users, "user"),
            },
        )
