"""AuthService and AdminService: protobuf <-> the auth domain, nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import grpc
from aqueduct.auth.v1 import auth_pb2 as pb
from aqueduct.auth.v1 import auth_pb2_grpc

from core.errors import Kind, ServiceError
from services.auth import convert
from services.auth.authority import KeyAuthority
from services.auth.events import EventHub
from services.auth.key_admin import KeyAdmin
from services.auth.key_limits import KeyLimitsSource
from services.auth.keys import KeyRecord
from services.auth.quotas import Quotas
from services.auth.team_view import TeamView
from services.auth.usage_report import ReportScope, Summary

Context = grpc.aio.ServicerContext[Any, Any]
GROUPINGS = {
    pb.USAGE_GROUPING_KEY: "key",
    pb.USAGE_GROUPING_MODEL: "model",
    pb.USAGE_GROUPING_TEAM: "team",
    pb.USAGE_GROUPING_ROUTE: "route",
}
HEARTBEAT_EVERY_S = 0.25  # edges stop trusting their cache after 3 missed
BUCKETS = {
    pb.USAGE_BUCKET_MINUTE: "minute",
    pb.USAGE_BUCKET_HOUR: "hour",
    pb.USAGE_BUCKET_DAY: "day",
}
EVENT_KINDS = {"key": pb.KEY_EVENT_KIND_KEY_CHANGED, "team": pb.KEY_EVENT_KIND_TEAM_CHANGED}


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(
        self,
        authority: KeyAuthority,
        events: EventHub,
        quotas: Quotas,
        key_limits: KeyLimitsSource,
    ) -> None:
        self.authority = authority
        self.events = events
        self.quotas = quotas
        self.key_limits = key_limits

    async def VerifyKey(
        self, request: pb.VerifyKeyRequest, context: Context
    ) -> pb.VerifyKeyResponse:
        record, team_limits = await self.authority.verify(request.key)
        return pb.VerifyKeyResponse(principal=convert.principal_message(record, team_limits))

    async def GetPrincipal(
        self, request: pb.GetPrincipalRequest, context: Context
    ) -> pb.GetPrincipalResponse:
        record, team_limits = await self.authority.principal(request.key_id)
        return pb.GetPrincipalResponse(principal=convert.principal_message(record, team_limits))

    async def WatchKeyEvents(  # type: ignore[override]  # writes, does not yield
        self, request: pb.WatchKeyEventsRequest, context: Context
    ) -> None:
        """READY only while the hub is healthy (a READY during a Redis outage would
        let the edge trust its cache while changes cannot reach it), then a
        HEARTBEAT every HEARTBEAT_EVERY_S for as long as it stays healthy."""
        queue = self.events.subscribe()  # before READY, so no later event is missed
        ready = False
        try:
            while True:
                if not ready and self.events.healthy:
                    await context.write(
                        pb.WatchKeyEventsResponse(
                            kind=pb.KEY_EVENT_KIND_READY,
                            heartbeat_interval_ms=int(HEARTBEAT_EVERY_S * 1000),
                        )
                    )
                    ready = True
                try:
                    async with asyncio.timeout(HEARTBEAT_EVERY_S):
                        event = await queue.get()
                except TimeoutError:
                    if ready and self.events.healthy:  # unhealthy: say nothing, the edge stops
                        await context.write(
                            pb.WatchKeyEventsResponse(kind=pb.KEY_EVENT_KIND_HEARTBEAT)
                        )
                    continue
                if event is None:
                    return
                await context.write(
                    pb.WatchKeyEventsResponse(
                        kind=EVENT_KINDS[event.kind],
                        key_id=event.subject if event.kind == "key" else "",
                        team=event.subject if event.kind == "team" else "",
                    )
                )
        finally:
            self.events.unsubscribe(queue)

    async def ReserveQuota(
        self, request: pb.ReserveQuotaRequest, context: Context
    ) -> pb.ReserveQuotaResponse:
        return await self._reserve(request)

    async def SettleQuotas(
        self, request: pb.SettleQuotasRequest, context: Context
    ) -> pb.SettleQuotasResponse:
        await self._settle(request.settles)
        return pb.SettleQuotasResponse()

    async def SettleAndReserveQuota(
        self, request: pb.SettleAndReserveQuotaRequest, context: Context
    ) -> pb.SettleAndReserveQuotaResponse:
        # Settles first: a slot one of them frees must be free for this reservation
        # (a client's next request often carries its previous request's settle).
        if request.settles:
            await self._settle(request.settles)
        return pb.SettleAndReserveQuotaResponse(reserved=await self._reserve(request.reserve))

    async def _reserve(self, request: pb.ReserveQuotaRequest) -> pb.ReserveQuotaResponse:
        # The team and limits are auth's own, not the message's (a caller could
        # otherwise send no limits at all); the message's copies are ignored.
        held = await self.key_limits.of(request.key_id)
        admitted = await self.quotas.reserve(
            request.key_id,
            held.team,
            held.key,
            held.team_limits,
            request.input_tokens,
            request.output_tokens,
            request.requests,
            request.slots,
        )
        return pb.ReserveQuotaResponse(
            reservation=convert.reservation_message(admitted.reservation),
            requests=convert.level_message(admitted.requests),
            tokens=convert.level_message(admitted.tokens),
        )

    async def _settle(self, settles: Iterable[pb.Settlement]) -> None:
        await self.quotas.settle(
            [
                (
                    convert.reservation_value(s.reservation),
                    convert.settle_usage(s),
                    convert.settle_part(s.part),
                )
                for s in settles
            ]
        )


def _summary_message(summary: Summary) -> pb.UsageSummary:
    return pb.UsageSummary(
        requests=summary.requests,
        errors=summary.errors,
        input_tokens=summary.input_tokens,
        output_tokens=summary.output_tokens,
        completion_latency_ms=summary.completion_latency_ms,
        completion_requests=summary.completion_requests,
        embedding_latency_ms=summary.embedding_latency_ms,
        embedding_requests=summary.embedding_requests,
        ttft_ms=summary.ttft_ms,
    )


def _groups(rows: list[tuple[str, Summary]]) -> list[pb.UsageGroupTotal]:
    return [pb.UsageGroupTotal(name=name, summary=_summary_message(s)) for name, s in rows]


class AdminServicer(auth_pb2_grpc.AdminServiceServicer):
    """Every method first checks `authorization: Bearer <admin key>` metadata
    (ReportUsage and ListTeamKeys: any active key, scoped to its team)."""

    def __init__(self, authority: KeyAuthority, admin: KeyAdmin, team_view: TeamView) -> None:
        self.authority = authority
        self.admin = admin
        self.team_view = team_view

    async def _authorize(self, context: Context) -> None:
        await self.authority.verify_admin(self._secret(context))

    async def _caller(self, context: Context) -> KeyRecord:
        record, _ = await self.authority.verify(self._secret(context))
        return record

    @staticmethod
    def _secret(context: Context) -> str:
        metadata = dict(context.invocation_metadata() or ())
        scheme, _, secret = str(metadata.get("authorization", "")).partition(" ")
        if scheme.lower() != "bearer" or not secret:
            raise ServiceError(
                Kind.UNAUTHENTICATED,
                "KEY_MISSING",
                "Admin calls need 'authorization: Bearer <admin key>' metadata.",
            )
        return secret

    async def CreateKey(
        self, request: pb.CreateKeyRequest, context: Context
    ) -> pb.CreateKeyResponse:
        await self._authorize(context)
        record, secret = await self.admin.create(convert.key_changes(request.spec))
        return pb.CreateKeyResponse(key=convert.key_info(record), secret=secret)

    async def ListKeys(self, request: pb.ListKeysRequest, context: Context) -> pb.ListKeysResponse:
        await self._authorize(context)
        records = await self.admin.list_keys()
        return pb.ListKeysResponse(keys=[convert.key_info(r) for r in records])

    async def GetKey(self, request: pb.GetKeyRequest, context: Context) -> pb.GetKeyResponse:
        await self._authorize(context)
        record = await self.admin.get(request.id)
        return pb.GetKeyResponse(key=convert.key_info(record))

    async def UpdateKey(
        self, request: pb.UpdateKeyRequest, context: Context
    ) -> pb.UpdateKeyResponse:
        await self._authorize(context)
        record = await self.admin.update(request.id, convert.key_changes(request.spec))
        return pb.UpdateKeyResponse(key=convert.key_info(record))

    async def RevokeKey(
        self, request: pb.RevokeKeyRequest, context: Context
    ) -> pb.RevokeKeyResponse:
        await self._authorize(context)
        record = await self.admin.revoke(request.id)
        return pb.RevokeKeyResponse(key=convert.key_info(record))

    async def SetTeamLimits(
        self, request: pb.SetTeamLimitsRequest, context: Context
    ) -> pb.SetTeamLimitsResponse:
        await self._authorize(context)
        limits = await self.admin.set_team_limits(
            request.team, convert.limits_value(request.limits)
        )
        return pb.SetTeamLimitsResponse(
            team=pb.Team(name=request.team, limits=convert.limits_message(limits))
        )

    async def GetTeam(self, request: pb.GetTeamRequest, context: Context) -> pb.GetTeamResponse:
        await self._authorize(context)
        limits = await self.admin.team_limits(request.team)
        return pb.GetTeamResponse(
            team=pb.Team(name=request.team, limits=convert.limits_message(limits))
        )

    async def QueryUsage(
        self, request: pb.QueryUsageRequest, context: Context
    ) -> pb.QueryUsageResponse:
        await self._authorize(context)
        filters = {
            "key_id": request.key_id,
            "team": request.team,
            "model": request.model,
            "batch_id": request.batch_id,
            "since": request.since if request.HasField("since") else None,
            "until": request.until if request.HasField("until") else None,
        }
        rows = await self.admin.usage(filters, GROUPINGS.get(request.group_by))
        return pb.QueryUsageResponse(
            totals=[
                pb.UsageTotal(
                    key_id=row.get("key", ""),
                    model=row.get("model", ""),
                    team=row.get("team", ""),
                    route=row.get("route", ""),
                    requests=row["requests"],
                    input_tokens=row["input_tokens"],
                    output_tokens=row["output_tokens"],
                    errors=row["errors"],
                )
                for row in rows
            ]
        )

    async def ReportUsage(
        self, request: pb.ReportUsageRequest, context: Context
    ) -> pb.ReportUsageResponse:
        caller = await self._caller(context)
        report = await self.team_view.report(
            caller,
            ReportScope(
                since=request.since,
                until=request.until,
                bucket=BUCKETS.get(request.bucket, ""),
                team=request.team,
                key_id=request.key_id,
                top=request.top or 10,
            ),
        )
        return pb.ReportUsageResponse(
            summary=_summary_message(report.summary),
            buckets=[
                pb.UsageBucketTotal(start=start, summary=_summary_message(s))
                for start, s in report.buckets
            ],
            keys=_groups(report.keys),
            teams=_groups(report.teams),
            models=_groups(report.models),
            users=_groups(report.users),
            team=report.team,
        )

    async def ListTeamKeys(
        self, request: pb.ListTeamKeysRequest, context: Context
    ) -> pb.ListTeamKeysResponse:
        caller = await self._caller(context)
        records = await self.team_view.keys(caller, request.team)
        return pb.ListTeamKeysResponse(keys=[convert.key_info(r) for r in records])
