"""The limits a key or a team can have, named as the auth proto's Limits message
names them: the edge and the auth service share the list without the edge
importing auth's domain code."""

from __future__ import annotations

from typing import Literal, cast

from aqueduct.auth.v1 import auth_pb2

# The same names for mypy (the generated HasField takes a Literal); a unit test
# keeps the two equal.
LimitName = Literal["rpm", "input_tpm", "output_tpm", "max_concurrent"]
LIMIT_NAMES = cast(tuple[LimitName, ...], tuple(f.name for f in auth_pb2.Limits.DESCRIPTOR.fields))


def unlimited(principal: auth_pb2.Principal) -> bool:
    """A key with no limit of its own nor its team's: nothing to reserve."""
    return not any(
        limits.HasField(name)
        for limits in (principal.limits, principal.team_limits)
        for name in LIMIT_NAMES
    )
