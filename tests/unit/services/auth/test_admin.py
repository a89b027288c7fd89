"""The operator CLI (services/auth/admin.py) against grpc_testing's channel
double: the requests it sends for each command, the admin key it sends them
with, and what it prints. No sockets, no auth service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import grpc_testing
import pytest
from aqueduct.auth.v1 import auth_pb2 as pb

from core.limit_names import LIMIT_NAMES
from services.auth import admin

SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"]
KEY = "sk-aq-admin-cli-test"


@dataclass
class Sent:
    """One CLI run: the call it made, and how it ended."""

    request: Any
    metadata: dict[str, str]
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as executor:
        yield executor


@pytest.fixture
def cli(pool: ThreadPoolExecutor, capsys: pytest.CaptureFixture[str]) -> Any:
    def run(
        argv: list[str],
        method: str,
        response: Any = None,
        code: grpc.StatusCode = grpc.StatusCode.OK,
        details: str = "",
    ) -> Sent:
        channel = grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())
        ran = pool.submit(admin.main, ["--admin-key", KEY, *argv], lambda _address: channel)
        metadata, request, rpc = channel.take_unary_unary(SERVICE.methods_by_name[method])
        rpc.terminate(response, (), code, details)
        exit_code = ran.result(timeout=30)
        out, err = capsys.readouterr()
        return Sent(request, dict(metadata), exit_code, out, err)

    return run


def test_keys_create_sends_the_spec_with_the_admin_key_and_prints_the_answer(cli: Any) -> None:
    answer = pb.CreateKeyResponse(secret="sk-aq-new", key=pb.KeyInfo(id="key_1", name="ci"))
    sent = cli(
        ["keys", "create", "--name", "ci", "--team", "data", "--models", "m1, m2", "--rpm", "60"],
        "CreateKey",
        answer,
    )
    assert sent.metadata["authorization"] == f"Bearer {KEY}"
    spec = sent.request.spec
    assert (spec.name, spec.team, list(spec.models), spec.set_models) == (
        "ci",
        "data",
        ["m1", "m2"],
        True,
    )
    assert spec.set_limits and spec.limits.rpm == 60
    assert not spec.limits.HasField("input_tpm")
    assert sent.exit_code == 0
    printed = json.loads(sent.stdout)
    assert printed["secret"] == "sk-aq-new" and printed["key"]["id"] == "key_1"


def test_keys_update_with_models_all_clears_the_list_and_leaves_limits_alone(cli: Any) -> None:
    sent = cli(["keys", "update", "key_1", "--models", "all"], "UpdateKey", pb.UpdateKeyResponse())
    assert sent.request.id == "key_1"
    assert sent.request.spec.set_models and list(sent.request.spec.models) == []
    assert not sent.request.spec.set_limits


def test_every_limit_of_the_proto_is_a_flag(cli: Any) -> None:
    values = {name: i + 1 for i, name in enumerate(LIMIT_NAMES)}
    flags = [arg for name, v in values.items() for arg in (f"--{name.replace('_', '-')}", str(v))]
    sent = cli(["teams", "set", "data", *flags], "SetTeamLimits", pb.SetTeamLimitsResponse())
    assert sent.request.team == "data"
    assert {name: getattr(sent.request.limits, name) for name in LIMIT_NAMES} == values


def test_usage_sends_the_grouping_and_the_time_range(cli: Any) -> None:
    sent = cli(
        ["usage", "--group-by", "model", "--since", "1764000000", "--team", "data"],
        "QueryUsage",
        pb.QueryUsageResponse(),
    )
    request = sent.request
    assert request.group_by == pb.USAGE_GROUPING_MODEL
    assert request.since == 1764000000 and not request.HasField("until")
    assert request.team == "data"


def test_a_refused_call_is_one_line_on_stderr_and_exit_code_1(cli: Any) -> None:
    sent = cli(
        ["keys", "revoke", "key_1"],
        "RevokeKey",
        None,
        grpc.StatusCode.PERMISSION_DENIED,
        "This key is not an admin key.",
    )
    assert sent.request.id == "key_1"
    assert sent.exit_code == 1
    assert sent.stdout == ""
    assert sent.stderr == "error: PERMISSION_DENIED: This key is not an admin key.\n"
