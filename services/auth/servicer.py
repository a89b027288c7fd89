"""AuthService and AdminService: protobuf <-> the auth domain, nothing more."""

from __future__ import annotations

from typing import Any

import grpc
from aqueduct.auth.v1 import auth_pb2 as pb
from aqueduct.auth.v1 import auth_pb2_grpc

from core.errors import Kind, ServiceError
from services.auth import convert
from services.auth.authority import KeyAuthority
from services.auth.events import EventHub
from services.auth.key_admin import KeyAdmin
from services.auth.quotas import Quotas

Context = grpc.aio.ServicerContext[Any, Any]
GROUPINGS = {
    pb.USAGE_GROUPING_KEY: "key",
    pb.USAGE_GROUPING_MODEL: "model",
    pb.USAGE_GROUPING_TEAM: "team",
}
EVENT_KINDS = {"key": pb.KEY_EVENT_KIND_KEY_CHANGED, "team": pb.KEY_EVENT_KIND_TEAM_CHANGED}


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, authority: KeyAuthority, events: EventHub, quotas: Quotas) -> None:
        self.authority = authority
        self.events = events
        self.quotas = quotas

    async def VerifyKey(
        self, request: pb.VerifyKeyRequest, context: Context
    ) -> pb.VerifyKeyResponse:
        record, team_limits = await self.authority.verify(request.key)
        return pb.VerifyKeyResponse(principal=convert.principal_message(record, team_limits))

    async def WatchKeyEvents(  # type: ignore[override]  # writes, does not yield
        self, request: pb.WatchKeyEventsRequest, context: Context
    ) -> None:
        queue = self.events.subscribe()  # before READY, so no later event is missed
        try:
            await context.write(pb.WatchKeyEventsResponse(kind=pb.KEY_EVENT_KIND_READY))
            while (event := await queue.get()) is not None:
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
        admitted = await self.quotas.reserve(
            request.key_id,
            request.team,
            convert.limits_value(request.key_limits),
            convert.limits_value(request.team_limits),
            request.input_tokens,
            request.output_tokens,
        )
        return pb.ReserveQuotaResponse(
            reservation=convert.reservation_message(admitted.reservation),
            requests=convert.level_message(admitted.requests),
            tokens=convert.level_message(admitted.tokens),
        )

    async def SettleQuotas(
        self, request: pb.SettleQuotasRequest, context: Context
    ) -> pb.SettleQuotasResponse:
        await self.quotas.settle(
            [
                (convert.reservation_value(s.reservation), convert.usage_row(s.usage))
                for s in request.settles
            ]
        )
        return pb.SettleQuotasResponse()


class AdminServicer(auth_pb2_grpc.AdminServiceServicer):
    """Every method first checks `authorization: Bearer <admin key>` metadata."""

    def __init__(self, authority: KeyAuthority, admin: KeyAdmin) -> None:
        self.authority = authority
        self.admin = admin

    async def _authorize(self, context: Context) -> None:
        metadata = dict(context.invocation_metadata() or ())
        scheme, _, secret = str(metadata.get("authorization", "")).partition(" ")
        if scheme.lower() != "bearer" or not secret:
            raise ServiceError(
                Kind.UNAUTHENTICATED,
                "KEY_MISSING",
                "Admin calls need 'authorization: Bearer <admin key>' metadata.",
            )
        await self.authority.verify_admin(secret)

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
                    requests=row["requests"],
                    input_tokens=row["input_tokens"],
                    output_tokens=row["output_tokens"],
                    errors=row["errors"],
                )
                for row in rows
            ]
        )
