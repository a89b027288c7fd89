"""Operator CLI over the auth service's AdminService (gRPC).

    python -m services.auth.admin keys create --name ci --team data --models m1,m2 --rpm 60
    python -m services.auth.admin keys list | get ID | update ID --rpm 120 | revoke ID
    python -m services.auth.admin teams set data --rpm 600 | get data
    python -m services.auth.admin usage --group-by model --since 1764000000

It talks to AQUEDUCT_AUTH_ADDR (or --addr) with an admin key from --admin-key,
AQUEDUCT_ADMIN_KEY, AQUEDUCT_BOOTSTRAP_KEY or $AQUEDUCT_DATA_DIR/bootstrap-key.
Answers are printed as JSON; errors as one line on stderr, exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from aqueduct.auth.v1 import auth_pb2 as pb
from aqueduct.auth.v1 import auth_pb2_grpc
from google.protobuf.json_format import MessageToDict

from core.config import data_dir, listen_address
from core.limit_names import LIMIT_NAMES
from core.tls import tls_from_env
from services.auth.authority import BOOTSTRAP_FILE

GROUPS = {
    "key": pb.USAGE_GROUPING_KEY,
    "model": pb.USAGE_GROUPING_MODEL,
    "team": pb.USAGE_GROUPING_TEAM,
    "route": pb.USAGE_GROUPING_ROUTE,
}


def _limit_flags(parser: argparse.ArgumentParser) -> None:
    for name in LIMIT_NAMES:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name)


def _key_flags(parser: argparse.ArgumentParser, creating: bool) -> None:
    parser.add_argument("--name", required=creating)
    parser.add_argument("--team")
    parser.add_argument("--models", help="comma-separated model ids; 'all' for every model")
    parser.add_argument("--admin", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--expires-at", type=int, help="unix seconds; 0 for never")
    _limit_flags(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.auth.admin")
    parser.add_argument("--addr", default=None, help="auth service host:port")
    parser.add_argument("--admin-key", default=None)
    top = parser.add_subparsers(dest="command", required=True)
    keys = top.add_parser("keys").add_subparsers(dest="action", required=True)
    _key_flags(keys.add_parser("create"), creating=True)
    keys.add_parser("list")
    keys.add_parser("get").add_argument("id")
    update = keys.add_parser("update")
    update.add_argument("id")
    _key_flags(update, creating=False)
    keys.add_parser("revoke").add_argument("id")
    teams = top.add_parser("teams").add_subparsers(dest="action", required=True)
    team_set = teams.add_parser("set")
    team_set.add_argument("team")
    _limit_flags(team_set)
    teams.add_parser("get").add_argument("team")
    usage = top.add_parser("usage")
    for name in ("key-id", "team", "model"):
        usage.add_argument(f"--{name}", default="")
    usage.add_argument("--since", type=float)
    usage.add_argument("--until", type=float)
    usage.add_argument("--group-by", choices=sorted(GROUPS))
    return parser


def _limits(args: argparse.Namespace) -> tuple[pb.Limits, bool]:
    given = {n: getattr(args, n) for n in LIMIT_NAMES if getattr(args, n) is not None}
    return pb.Limits(**given), bool(given)


def key_spec(args: argparse.Namespace) -> pb.KeySpec:
    spec = pb.KeySpec()
    if args.name is not None:
        spec.name = args.name
    if args.team is not None:
        spec.team = args.team
    if args.models is not None:
        spec.set_models = True
        if args.models != "all":
            spec.models.extend(m.strip() for m in args.models.split(",") if m.strip())
    if args.admin is not None:
        spec.admin = args.admin
    if args.expires_at is not None:
        spec.expires_at = args.expires_at
    limits, given = _limits(args)
    if given:
        spec.limits.CopyFrom(limits)
        spec.set_limits = True
    return spec


def admin_key(explicit: str | None) -> str:
    for candidate in (
        explicit,
        os.environ.get("AQUEDUCT_ADMIN_KEY"),
        os.environ.get("AQUEDUCT_BOOTSTRAP_KEY"),
    ):
        if candidate:
            return candidate
    path = data_dir() / BOOTSTRAP_FILE
    if path.is_file():
        return path.read_text().strip()
    raise SystemExit("no admin key: pass --admin-key or set AQUEDUCT_ADMIN_KEY")


def run(args: argparse.Namespace, stub: auth_pb2_grpc.AdminServiceStub, key: str) -> Any:
    metadata = (("authorization", f"Bearer {key}"),)
    call: dict[tuple[str, str | None], tuple[str, Any]] = {
        ("keys", "create"): ("CreateKey", lambda: pb.CreateKeyRequest(spec=key_spec(args))),
        ("keys", "list"): ("ListKeys", pb.ListKeysRequest),
        ("keys", "get"): ("GetKey", lambda: pb.GetKeyRequest(id=args.id)),
        ("keys", "update"): (
            "UpdateKey",
            lambda: pb.UpdateKeyRequest(id=args.id, spec=key_spec(args)),
        ),
        ("keys", "revoke"): ("RevokeKey", lambda: pb.RevokeKeyRequest(id=args.id)),
        ("teams", "set"): (
            "SetTeamLimits",
            lambda: pb.SetTeamLimitsRequest(team=args.team, limits=_limits(args)[0]),
        ),
        ("teams", "get"): ("GetTeam", lambda: pb.GetTeamRequest(team=args.team)),
        ("usage", None): ("QueryUsage", lambda: _usage_request(args)),
    }
    method, build = call[(args.command, getattr(args, "action", None))]
    return getattr(stub, method)(build(), metadata=metadata, timeout=10)


def _usage_request(args: argparse.Namespace) -> pb.QueryUsageRequest:
    request = pb.QueryUsageRequest(
        key_id=args.key_id,
        team=args.team,
        model=args.model,
        group_by=GROUPS.get(args.group_by or "", pb.USAGE_GROUPING_UNSPECIFIED),
    )
    if args.since is not None:
        request.since = args.since
    if args.until is not None:
        request.until = args.until
    return request


def connect_channel(address: str) -> grpc.Channel:
    """Mutual TLS when AQUEDUCT_TLS_* are set (the CLI's certificate CN is `admin`)."""
    tls = tls_from_env()
    if tls is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, tls.channel_credentials())


def main(
    argv: Sequence[str] | None = None,
    connect: Callable[[str], grpc.Channel] = connect_channel,  # tests: a channel double
) -> int:
    args = build_parser().parse_args(argv)
    address = args.addr or listen_address("auth")
    with connect(address) as channel:
        try:
            answer = run(args, auth_pb2_grpc.AdminServiceStub(channel), admin_key(args.admin_key))
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print(json.dumps(MessageToDict(answer, preserving_proto_field_name=True), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
