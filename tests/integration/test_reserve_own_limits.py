"""ReserveQuota enforces auth's own record of a key, whatever limits the caller sends."""

from __future__ import annotations

import time

import grpc
import httpx
import pytest
from aqueduct.auth.v1 import auth_pb2 as pb
from aqueduct.auth.v1 import auth_pb2_grpc

from tests.admin_api import ADMIN, create_key
from tests.stack import Stack


def reserve(stub: auth_pb2_grpc.AuthServiceStub, key_id: str) -> pb.ReserveQuotaResponse:
    forged = pb.Limits()  # "no limits at all", and another team
    return stub.ReserveQuota(  # type: ignore[no-any-return]
        pb.ReserveQuotaRequest(
            key_id=key_id, team="someone-else", key_limits=forged, team_limits=forged
        ),
        timeout=5,
    )


def test_a_caller_cannot_send_its_way_past_the_key_limits(stack: Stack) -> None:
    key = create_key(stack.base_url, limits={"rpm": 1})
    with grpc.insecure_channel(stack.address("auth")) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        first = reserve(stub, key["id"])
        assert first.reservation.key_limits.rpm == 1  # the record's, not the message's
        assert first.reservation.team == key["team"]
        with pytest.raises(grpc.RpcError) as caught:
            reserve(stub, key["id"])
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]


def test_a_limit_raised_by_an_admin_applies_to_the_next_reserve(stack: Stack) -> None:
    key = create_key(stack.base_url, limits={"rpm": 1})
    with grpc.insecure_channel(stack.address("auth")) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        reserve(stub, key["id"])
        changed = httpx.patch(
            f"{stack.base_url}/v1/admin/keys/{key['id']}",
            headers=ADMIN,
            json={"limits": {"rpm": 100}},
        )
        assert changed.status_code == 200, changed.text
        for _ in range(20):  # the key event reaches auth's own cache in moments
            try:
                assert reserve(stub, key["id"]).reservation.key_limits.rpm == 100
                break
            except (grpc.RpcError, AssertionError):
                time.sleep(0.05)
        else:
            raise AssertionError("the raised limit never applied")


def test_revoked_and_unknown_keys_reserve_nothing(stack: Stack) -> None:
    key = create_key(stack.base_url)
    revoked = httpx.delete(f"{stack.base_url}/v1/admin/keys/{key['id']}", headers=ADMIN)
    assert revoked.status_code == 200
    with grpc.insecure_channel(stack.address("auth")) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        for key_id in (key["id"], "key_does_not_exist"):
            with pytest.raises(grpc.RpcError) as caught:
                reserve(stub, key_id)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def test_settles_carried_by_a_reservation_are_done_first_and_stand_if_it_is_refused(
    stack: Stack,
) -> None:
    key = create_key(stack.base_url, limits={"max_concurrent": 1, "input_tpm": 100})
    with grpc.insecure_channel(stack.address("auth")) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)

        def settle_and_reserve(settles: list[pb.Settlement], tokens: int) -> pb.Reservation:
            answer = stub.SettleAndReserveQuota(
                pb.SettleAndReserveQuotaRequest(
                    settles=settles,
                    reserve=pb.ReserveQuotaRequest(key_id=key["id"], input_tokens=tokens),
                ),
                timeout=5,
            )
            return answer.reserved.reservation  # type: ignore[no-any-return]

        def code_of(settles: list[pb.Settlement], tokens: int) -> grpc.StatusCode:
            with pytest.raises(grpc.RpcError) as caught:
                settle_and_reserve(settles, tokens)
            return caught.value.code()  # type: ignore[attr-defined, no-any-return]

        held = settle_and_reserve([], 1)
        ends_held = pb.Settlement(
            reservation=held,
            usage=pb.UsageRecord(request_id="held", status=200, input_tokens=1),
            part=pb.SETTLE_PART_LIMITS,
        )
        assert code_of([], 1) == grpc.StatusCode.RESOURCE_EXHAUSTED  # the one slot is held
        # Refused by input_tpm after its settle freed the slot: the settle stands...
        assert code_of([ends_held], 1000) == grpc.StatusCode.RESOURCE_EXHAUSTED
        second = settle_and_reserve([], 1)
        assert second.id not in ("", held.id)
        # ...once: the same settle again frees nothing more.
        assert code_of([ends_held], 1) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # A settle is done before the reservation it rides on: the slot it frees is taken.
        ends_second = pb.Settlement(
            reservation=second,
            usage=pb.UsageRecord(request_id="second", status=200, input_tokens=1),
            part=pb.SETTLE_PART_LIMITS,
        )
        assert settle_and_reserve([ends_second], 1).id not in ("", held.id, second.id)
