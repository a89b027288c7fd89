"""AuthService: protobuf <-> KeyAuthority, nothing more."""

from __future__ import annotations

from typing import Any

import grpc
from aqueduct.auth.v1 import auth_pb2, auth_pb2_grpc

from services.auth.authority import KeyAuthority
from services.auth.keys import KeyRecord
from services.common.errors import ServiceError
from services.common.status import abort


def principal_message(record: KeyRecord) -> auth_pb2.Principal:
    limits = auth_pb2.Limits()
    for name in ("rpm", "input_tpm", "output_tpm", "max_concurrent"):
        value = getattr(record.limits, name)
        if value is not None:
            setattr(limits, name, value)
    return auth_pb2.Principal(
        key_id=record.id,
        name=record.name,
        team=record.team,
        allowed_models=list(record.models or ()),
        admin=record.admin,
        limits=limits,
        expires_at=record.expires_at or 0,
    )


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, authority: KeyAuthority) -> None:
        self.authority = authority

    async def VerifyKey(
        self, request: auth_pb2.VerifyKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> auth_pb2.VerifyKeyResponse:
        try:
            record = await self.authority.verify(request.key)
        except ServiceError as error:
            await abort(context, error)
        return auth_pb2.VerifyKeyResponse(principal=principal_message(record))
