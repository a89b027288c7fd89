"""What any key may read about its own team (the web console's reads).

An admin key reads every team; any other active key only its own: another
team is PERMISSION_DENIED (TEAM_NOT_ALLOWED), a key outside its team is
NOT_FOUND, as if it did not exist. Inputs are checked and named here, so gRPC
callers get the same answers as the console.
"""

from __future__ import annotations

import asyncio

from core.errors import Kind, ServiceError
from services.auth.key_admin import invalid
from services.auth.keys import KeyRecord
from services.auth.store import KeyStore
from services.auth.usage_report import (
    BUCKET_SECONDS,
    MAX_BUCKETS,
    Report,
    ReportScope,
    UsageReports,
    bucket_count,
)

MAX_TOP = 100


def _team_not_allowed(team: str) -> ServiceError:
    return ServiceError(
        Kind.PERMISSION_DENIED,
        "TEAM_NOT_ALLOWED",
        f"This API key may not read the team '{team}'.",
        param="team",
    )


class TeamView:
    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.reports = UsageReports(store)

    def _team(self, caller: KeyRecord, team: str) -> str:
        """The team the caller reads: as asked for an admin, its own otherwise."""
        if caller.admin:
            return team
        if team and team != caller.team:
            raise _team_not_allowed(team)
        return caller.team

    async def keys(self, caller: KeyRecord, team: str) -> list[KeyRecord]:
        team = self._team(caller, team)
        return await asyncio.to_thread(self.store.all_keys, team)

    async def report(self, caller: KeyRecord, scope: ReportScope) -> Report:
        if scope.bucket not in BUCKET_SECONDS:
            raise invalid("bucket", "'bucket' must be minute, hour or day.")
        if not 0 <= scope.since < scope.until:
            raise invalid("until", "'until' must be after 'since' (unix seconds).")
        if bucket_count(scope) > MAX_BUCKETS:
            raise invalid(
                "bucket",
                f"The range holds more than {MAX_BUCKETS} {scope.bucket} buckets; "
                "choose a wider bucket or a shorter range.",
            )
        if not 1 <= scope.top <= MAX_TOP:
            raise invalid("top", f"'top' must be 1 to {MAX_TOP}.")
        team = self._team(caller, scope.team)
        if scope.key_id:
            key = await asyncio.to_thread(self.store.get, scope.key_id)
            if key is None or (team and key.team != team):
                raise ServiceError(
                    Kind.NOT_FOUND,
                    "KEY_NOT_FOUND",
                    f"No key with id '{scope.key_id}'.",
                    param="key_id",
                )
        scoped = ReportScope(
            since=scope.since,
            until=scope.until,
            bucket=scope.bucket,
            team=team,
            key_id=scope.key_id,
            top=scope.top,
        )
        return await asyncio.to_thread(self.reports.report, scoped)
