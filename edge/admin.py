"""The admin HTTP API (CONTRACT.md): keys, team limits, usage. Admin keys only.

The edge checks JSON shapes and types; auth checks meaning (limits >= 1, expiry
in the future, …), so gRPC callers and the CLI get the same rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from aqueduct.auth.v1 import auth_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from core.limit_names import LIMIT_NAMES
from edge.auth import Authenticator, require_admin
from edge.errors import from_rpc_error, invalid
from edge.http import json_response, read_json, request_id
from edge.path_ids import generated_id, named_id

if TYPE_CHECKING:
    from aqueduct.auth.v1.auth_pb2_grpc import AdminServiceAsyncStub

MAX_ADMIN_BODY = 64 * 1024
ADMIN_TIMEOUT_S = 10.0
KEY_FIELDS = {"name", "team", "models", "admin", "expires_at", "limits"}
GROUPS = {
    "key": pb.USAGE_GROUPING_KEY,
    "model": pb.USAGE_GROUPING_MODEL,
    "team": pb.USAGE_GROUPING_TEAM,
    "route": pb.USAGE_GROUPING_ROUTE,
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def limits_message(value: object, param: str = "limits") -> pb.Limits:
    if not isinstance(value, dict):
        raise invalid(param, f"'{param}' must be an object.", "invalid_type")
    limits = pb.Limits()
    for name, number in value.items():
        if name not in LIMIT_NAMES:
            raise invalid(
                f"{param}.{name}",
                f"Unknown limit '{name}'; use {', '.join(LIMIT_NAMES)}.",
                "unknown_field",
            )
        if number is None:
            continue
        if not _is_int(number) or not -(2**63) <= number < 2**63:
            raise invalid(
                f"{param}.{name}", f"'{param}.{name}' must be an integer or null.", "invalid_type"
            )
        setattr(limits, name, number)
    return limits


def key_spec(body: object, creating: bool) -> pb.KeySpec:
    if not isinstance(body, dict):
        raise invalid(None, "The request body must be a JSON object.", "invalid_type")
    for name in body:
        if name not in KEY_FIELDS:
            raise invalid(name, f"Unknown field '{name}'.", "unknown_field")
    if creating and "name" not in body:
        raise invalid("name", "'name' is required.", "missing_required_parameter")
    spec = pb.KeySpec()
    for name in ("name", "team"):
        if name in body:
            if not isinstance(body[name], str):
                raise invalid(name, f"'{name}' must be a string.", "invalid_type")
            setattr(spec, name, body[name])
    if "models" in body:
        models = body["models"]
        if models is not None and (
            not isinstance(models, list) or not all(isinstance(m, str) for m in models)
        ):
            raise invalid(
                "models", "'models' must be an array of model ids, or null for all.", "invalid_type"
            )
        spec.set_models = True
        spec.models.extend(models or [])
    if "admin" in body:
        if not isinstance(body["admin"], bool):
            raise invalid("admin", "'admin' must be a boolean.", "invalid_type")
        spec.admin = body["admin"]
    if "expires_at" in body:
        expires = body["expires_at"]
        if expires is not None and (not _is_int(expires) or not 0 < expires < 2**63):
            raise invalid(
                "expires_at", "'expires_at' must be unix seconds or null.", "invalid_type"
            )
        spec.expires_at = expires or 0
    if "limits" in body:
        spec.set_limits = True
        spec.limits.CopyFrom(limits_message(body["limits"] or {}))
    return spec


def limits_json(limits: pb.Limits) -> dict[str, int | None]:
    return {name: getattr(limits, name) if limits.HasField(name) else None for name in LIMIT_NAMES}


def key_json(key: pb.KeyInfo) -> dict[str, Any]:
    return {
        "id": key.id,
        "object": "api_key",
        "name": key.name,
        "team": key.team,
        "models": None if key.all_models else list(key.models),
        "admin": key.admin,
        "limits": limits_json(key.limits),
        "expires_at": key.expires_at or None,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at or None,
        "revoked": key.revoked,
        "preview": key.preview,
    }


def _query_number(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise invalid(name, f"'{name}' must be unix seconds.", "invalid_type") from None


def _answer(request: Request, payload: object, status: int = 200) -> Response:
    return json_response(payload, status, {"x-request-id": request_id(request)})


def _key_id(request: Request) -> str:
    return generated_id(request, "id", "key", "id")


def _team(request: Request) -> str:
    return named_id(request, "team", "team", "team")


class AdminApi:
    def __init__(self, authenticator: Authenticator, stub: AdminServiceAsyncStub) -> None:
        self.authenticator = authenticator
        self.stub = stub

    async def _call(self, request: Request, method: str, message: Callable[[], Any]) -> Any:
        """`message()` is built once the key is known to be an admin's (its path
        ids checked then, so a non-admin key gets 403 whatever the path)."""
        rid = request_id(request)
        require_admin(await self.authenticator.authenticate(request.headers, rid))
        metadata = (("authorization", request.headers["authorization"]), ("x-request-id", rid))
        try:
            return await getattr(self.stub, method)(
                message(), timeout=ADMIN_TIMEOUT_S, metadata=metadata
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "auth") from None

    async def _body(self, request: Request) -> object:
        return await read_json(request, MAX_ADMIN_BODY)

    async def create_key(self, request: Request) -> Response:
        spec = key_spec(await self._body(request), creating=True)
        answer = await self._call(request, "CreateKey", lambda: pb.CreateKeyRequest(spec=spec))
        return _answer(request, {**key_json(answer.key), "key": answer.secret}, status=201)

    async def list_keys(self, request: Request) -> Response:
        answer = await self._call(request, "ListKeys", pb.ListKeysRequest)
        return _answer(request, {"object": "list", "data": [key_json(k) for k in answer.keys]})

    async def get_key(self, request: Request) -> Response:
        answer = await self._call(request, "GetKey", lambda: pb.GetKeyRequest(id=_key_id(request)))
        return _answer(request, key_json(answer.key))

    async def update_key(self, request: Request) -> Response:
        spec = key_spec(await self._body(request), creating=False)
        answer = await self._call(
            request, "UpdateKey", lambda: pb.UpdateKeyRequest(id=_key_id(request), spec=spec)
        )
        return _answer(request, key_json(answer.key))

    async def revoke_key(self, request: Request) -> Response:
        answer = await self._call(
            request, "RevokeKey", lambda: pb.RevokeKeyRequest(id=_key_id(request))
        )
        return _answer(request, key_json(answer.key))

    async def set_team(self, request: Request) -> Response:
        body = await self._body(request)
        if not isinstance(body, dict) or set(body) - {"limits"}:
            extra = sorted(set(body) - {"limits"}) if isinstance(body, dict) else []
            raise invalid(
                extra[0] if extra else None,
                'The body must be {"limits": {...}}.',
                "unknown_field" if extra else "invalid_type",
            )
        limits = limits_message(body.get("limits") or {})
        answer = await self._call(
            request,
            "SetTeamLimits",
            lambda: pb.SetTeamLimitsRequest(team=_team(request), limits=limits),
        )
        return _answer(
            request,
            {"object": "team", "name": answer.team.name, "limits": limits_json(answer.team.limits)},
        )

    async def get_team(self, request: Request) -> Response:
        answer = await self._call(
            request, "GetTeam", lambda: pb.GetTeamRequest(team=_team(request))
        )
        return _answer(
            request,
            {"object": "team", "name": answer.team.name, "limits": limits_json(answer.team.limits)},
        )

    async def usage(self, request: Request) -> Response:
        params = request.query_params
        for name in params:
            if name not in {"key_id", "team", "model", "batch_id", "since", "until", "group_by"}:
                raise invalid(name, f"Unknown query parameter '{name}'.", "unknown_field")
        group = params.get("group_by")
        if group is not None and group not in GROUPS:
            raise invalid("group_by", "'group_by' must be key, model, team or route.")
        query = pb.QueryUsageRequest(
            key_id=params.get("key_id", ""),
            team=params.get("team", ""),
            model=params.get("model", ""),
            batch_id=params.get("batch_id", ""),
            group_by=GROUPS.get(group or "", pb.USAGE_GROUPING_UNSPECIFIED),
        )
        since, until = _query_number(request, "since"), _query_number(request, "until")
        if since is not None:
            query.since = since
        if until is not None:
            query.until = until
        answer = await self._call(request, "QueryUsage", lambda: query)
        field = {"key": "key_id", "model": "model", "team": "team", "route": "route"}.get(
            group or ""
        )
        data = []
        for total in answer.totals:
            row: dict[str, Any] = {
                "requests": total.requests,
                "input_tokens": total.input_tokens,
                "output_tokens": total.output_tokens,
                "errors": total.errors,
            }
            if field:
                row[field] = getattr(total, field)
            data.append(row)
        return _answer(request, {"object": "list", "data": data})
