"""core/limit_names.py: the limit names come from the proto, and everything
that lists limits agrees with it."""

from __future__ import annotations

import dataclasses
from typing import get_args

from aqueduct.auth.v1 import auth_pb2

from core.limit_names import LIMIT_NAMES, LimitName
from services.auth.keys import Limits
from services.auth.limiter import BUCKET_LIMITS


def test_the_limit_names_are_the_proto_s_limits_fields() -> None:
    assert LIMIT_NAMES == ("rpm", "input_tpm", "output_tpm", "max_concurrent")
    assert tuple(f.name for f in auth_pb2.Limits.DESCRIPTOR.fields) == LIMIT_NAMES


def test_the_type_checker_s_names_are_the_same() -> None:
    assert get_args(LimitName) == LIMIT_NAMES


def test_auth_s_limits_record_has_a_field_per_limit() -> None:
    assert tuple(f.name for f in dataclasses.fields(Limits)) == LIMIT_NAMES


def test_every_limit_but_concurrency_is_a_token_bucket() -> None:
    assert set(BUCKET_LIMITS) == set(LIMIT_NAMES) - {"max_concurrent"}
