"""Protobuf <-> auth domain values, shared by the auth servicers."""

from __future__ import annotations

from typing import Any

from aqueduct.auth.v1 import auth_pb2 as pb

from core.limit_names import LIMIT_NAMES
from services.auth.key_admin import UNSET, KeyChanges
from services.auth.keys import KeyRecord, Limits
from services.auth.limiter import BucketLevel
from services.auth.quotas import ADMITTED, KEPT, Part, Reservation


def limits_message(limits: Limits) -> pb.Limits:
    return pb.Limits(**{k: v for k, v in limits.as_dict().items() if v is not None})


def limits_value(message: pb.Limits) -> Limits:
    return Limits(**{k: getattr(message, k) for k in LIMIT_NAMES if message.HasField(k)})


def principal_message(record: KeyRecord, team_limits: Limits) -> pb.Principal:
    return pb.Principal(
        key_id=record.id,
        name=record.name,
        team=record.team,
        allowed_models=list(record.models or ()),
        admin=record.admin,
        limits=limits_message(record.limits),
        expires_at=record.expires_at or 0,
        team_limits=limits_message(team_limits),
    )


def key_info(record: KeyRecord) -> pb.KeyInfo:
    return pb.KeyInfo(
        id=record.id,
        name=record.name,
        team=record.team,
        models=list(record.models or ()),
        all_models=record.models is None,
        admin=record.admin,
        limits=limits_message(record.limits),
        expires_at=record.expires_at or 0,
        created_at=record.created_at,
        last_used_at=record.last_used_at or 0,
        revoked=record.revoked,
        preview=record.preview,
    )


def key_changes(spec: pb.KeySpec) -> KeyChanges:
    return KeyChanges(
        name=spec.name if spec.HasField("name") else UNSET,
        team=spec.team if spec.HasField("team") else UNSET,
        models=(tuple(spec.models) or None) if spec.set_models else UNSET,
        admin=spec.admin if spec.HasField("admin") else UNSET,
        expires_at=(spec.expires_at or None) if spec.HasField("expires_at") else UNSET,
        limits=limits_value(spec.limits) if spec.set_limits else UNSET,
    )


def reservation_message(reservation: Reservation) -> pb.Reservation:
    return pb.Reservation(
        id=reservation.id,
        key_id=reservation.key_id,
        team=reservation.team,
        key_limits=limits_message(reservation.key_limits),
        team_limits=limits_message(reservation.team_limits),
        input_tokens=reservation.input_tokens,
        output_tokens=reservation.output_tokens,
        requests=reservation.requests,
        slots=reservation.slots,
    )


def reservation_value(message: pb.Reservation) -> Reservation:
    return Reservation(
        id=message.id,
        key_id=message.key_id,
        team=message.team,
        key_limits=limits_value(message.key_limits),
        team_limits=limits_value(message.team_limits),
        input_tokens=message.input_tokens,
        output_tokens=message.output_tokens,
        requests=max(1, message.requests),
        slots=max(1, message.slots),
    )


def level_message(level: BucketLevel | None) -> pb.RateLimitStatus:
    if level is None:
        return pb.RateLimitStatus(limited=False)
    return pb.RateLimitStatus(
        limited=True,
        limit=level.bucket.capacity,
        remaining=max(0, int(level.tokens)),
        reset_s=level.reset_s,
    )


SETTLE_PARTS = {
    pb.SETTLE_PART_UNSPECIFIED: Part.BOTH,
    pb.SETTLE_PART_LIMITS: Part.LIMITS,
    pb.SETTLE_PART_LEDGER: Part.LEDGER,
}


def settle_part(part: pb.SettlePart.ValueType) -> Part:
    """An unknown part (a newer caller's) is settled whole: each part counts once."""
    return SETTLE_PARTS.get(part, Part.BOTH)


def settle_usage(settle: pb.Settlement) -> dict[str, Any]:
    """The settle's usage row, plus what a lease's settle says of its requests."""
    row = usage_row(settle.usage)
    if settle.HasField("admitted_requests"):
        row[ADMITTED] = max(0, settle.admitted_requests)
    if settle.kept_slots:
        row[KEPT] = list(settle.kept_slots)
    return row


def usage_row(record: pb.UsageRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id[:128],
        "key_id": record.key_id,
        "team": record.team,
        "model": record.model[:200],
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "latency_ms": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "status": record.status,
        "error_code": record.error_code[:100],
        "user": record.user[:256],
        "stream": record.stream,
        "created_at": record.created_at,
        "batch_id": record.batch_id[:40],
        "route": record.route[:64],
    }
