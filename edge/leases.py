"""The lease book: blocks of a limited key's quota held at the edge.

When a key's (and its team's) limits are large next to one request, the edge
reserves a lease in one auth call: about 1/50 of each limit (≈1.2 s of refill) —
requests, input and output tokens, concurrency slots — and admits requests from
it here, synchronously, without a call each. A request takes 1 request, its
input estimate, its output budget and 1 slot; when it ends the slot comes back
and its unused tokens too. A lease retires after RETIRE_S or when a request does
not fit, and settles at once: the requests and tokens it did not use go back and
its idle slots are freed. Requests still running then keep their slot entries
and reserved tokens, and each settles on its own when it ends, as the
one-request reservation `<lease id>:<slot index>` — so a long stream never holds
a lease's unused rest. Auth took the whole block up front, so what the edges
admit never exceeds the limits; what a lease holds unused is only late, not lost
(unless the edge is killed: then until the buckets refill and the slots expire).

Small limits never lease (a lease must hold at least MIN_BLOCK requests, slots
and times the request's tokens): those keys reserve per request, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aqueduct.auth.v1 import auth_pb2 as pb

from core.limit_names import LimitName
from edge.errors import UNLIMITED_RATE_HEADERS, duration

FRACTION = 50  # a lease takes ~1/FRACTION of each limit's per-minute capacity
MIN_BLOCK = 8  # lease only when each limit gives at least this many requests' worth
MAX_SLOTS = 512  # slots one lease holds at most (more than an edge runs in a second)
MAX_REQUESTS = 100_000  # requests one lease holds at most (all of them without an rpm limit)
RETIRE_S = 1.0  # a lease admits for this long at most

BookKey = tuple[str, str, bytes]  # key id, team, the limits' fingerprint


def book_key(principal: pb.Principal) -> BookKey:
    """One open lease per key, team and limits: changed limits start a new lease."""
    fingerprint = (
        principal.limits.SerializeToString(deterministic=True)
        + b"|"
        + principal.team_limits.SerializeToString(deterministic=True)
    )
    return (principal.key_id, principal.team, fingerprint)


@dataclass(frozen=True, slots=True)
class Plan:
    """A lease's block; None for a limit that does not apply (nothing to count)."""

    requests: int
    input_tokens: int | None
    output_tokens: int | None
    slots: int | None


def _smallest(principal: pb.Principal, name: LimitName) -> int | None:
    """The tightest of the key's and its team's limit `name` (auth counts both)."""
    scopes = [principal.limits] + ([principal.team_limits] if principal.team else [])
    caps: list[int] = [getattr(s, name) for s in scopes if s.HasField(name)]
    return min(caps) if caps else None


def plan_for(principal: pb.Principal, input_tokens: int, output_tokens: int) -> Plan | None:
    """The block to lease for this key, or None: its limits are too small next to
    this request, so it reserves per request."""
    rpm = _smallest(principal, "rpm")
    requests = MAX_REQUESTS if rpm is None else min(MAX_REQUESTS, rpm // FRACTION)
    if requests < MIN_BLOCK:
        return None
    tokens: list[int | None] = []
    token_limits: tuple[tuple[LimitName, int], ...] = (
        ("input_tpm", input_tokens),
        ("output_tpm", output_tokens),
    )
    for name, demand in token_limits:
        cap = _smallest(principal, name)
        block = None if cap is None else cap // FRACTION
        if block is not None and (block < MIN_BLOCK * demand or block < 1):
            return None
        tokens.append(block)
    concurrent = _smallest(principal, "max_concurrent")
    slots = None if concurrent is None else min(MAX_SLOTS, concurrent // FRACTION)
    if slots is not None and slots < MIN_BLOCK:
        return None
    return Plan(requests, tokens[0], tokens[1], slots)


@dataclass(eq=False)
class Lease:
    key: BookKey
    reservation: pb.Reservation  # what auth reserved: the block, settled once
    requests_status: pb.RateLimitStatus  # levels after auth took the block
    tokens_status: pb.RateLimitStatus
    opened: float
    requests_left: int
    input_left: int | None  # None: no such limit
    output_left: int | None
    free_slots: list[int] | None  # slot entry indices not in use; None: no such limit
    admitted: int = 0
    input_used: int = 0  # actual tokens of requests that ended while it was open
    output_used: int = 0
    running: dict[int, Taken] = field(default_factory=dict)  # by slot index (or ordinal)
    retired: bool = False

    def fits(self, input_tokens: int, output_tokens: int) -> bool:
        return (
            self.requests_left >= 1
            and (self.input_left is None or self.input_left >= input_tokens)
            and (self.output_left is None or self.output_left >= output_tokens)
            and (self.free_slots is None or bool(self.free_slots))
        )

    def headers(self) -> dict[str, str]:
        """x-ratelimit-*: the levels when the lease was taken, minus what this edge
        admitted from it since (requests); tokens as they were after the block."""
        headers = dict(UNLIMITED_RATE_HEADERS)
        requests, tokens = self.requests_status, self.tokens_status
        if requests.limited:
            headers["x-ratelimit-limit-requests"] = str(requests.limit)
            headers["x-ratelimit-remaining-requests"] = str(
                max(0, requests.remaining + self.requests_left)
            )
            headers["x-ratelimit-reset-requests"] = duration(requests.reset_s)
        if tokens.limited:
            headers["x-ratelimit-limit-tokens"] = str(tokens.limit)
            headers["x-ratelimit-remaining-tokens"] = str(tokens.remaining)
            headers["x-ratelimit-reset-tokens"] = duration(tokens.reset_s)
        return headers


@dataclass(eq=False, slots=True)
class Taken:
    """One request's share of a lease, handed back by `LeaseBook.release`."""

    lease: Lease
    index: int  # its slot entry (or, without a concurrency limit, its ordinal)
    input_tokens: int
    output_tokens: int
    headers: dict[str, str]


class LeaseBook:
    """The open leases of one edge process; every method is synchronous (no await
    between looking at a lease and taking from it), so the event loop makes
    each admission atomic."""

    def __init__(
        self,
        settle: Callable[[pb.Settlement], None],
        now: Callable[[], float] = time.monotonic,
        retire_s: float = RETIRE_S,
    ) -> None:
        self._settle = settle  # queues a limits settle (the edge's limit settles)
        self._now = now
        self.retire_s = retire_s
        self._open: dict[BookKey, Lease] = {}

    def take(self, key: BookKey, input_tokens: int, output_tokens: int) -> Taken | None:
        """Admit one request from the key's open lease; None: no lease, or it is
        too old or too empty for this request (then it retires)."""
        lease = self._open.get(key)
        if lease is None:
            return None
        if self._now() - lease.opened >= self.retire_s or not lease.fits(
            input_tokens, output_tokens
        ):
            self.retire(lease)
            return None
        lease.requests_left -= 1
        if lease.input_left is not None:
            lease.input_left -= input_tokens
        if lease.output_left is not None:
            lease.output_left -= output_tokens
        index = lease.admitted if lease.free_slots is None else lease.free_slots.pop()
        lease.admitted += 1
        taken = Taken(lease, index, input_tokens, output_tokens, lease.headers())
        lease.running[index] = taken
        return taken

    def open(self, key: BookKey, answer: pb.ReserveQuotaResponse, plan: Plan) -> Lease:
        """Book a lease auth granted; the key's previous one retires."""
        granted = answer.reservation
        slots = max(1, granted.slots)
        lease = Lease(
            key=key,
            reservation=granted,
            requests_status=answer.requests,
            tokens_status=answer.tokens,
            opened=self._now(),
            requests_left=max(1, granted.requests),
            input_left=None if plan.input_tokens is None else granted.input_tokens,
            output_left=None if plan.output_tokens is None else granted.output_tokens,
            # Popped from the end: index 0 first.
            free_slots=None if plan.slots is None else list(range(slots - 1, -1, -1)),
        )
        previous = self._open.get(key)
        if previous is not None:
            self.retire(previous)
        self._open[key] = lease
        # An idle lease retires (and settles) by time too, not only on the next take;
        # without a loop (unit tests drive the clock by hand) only on the next take.
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_later(self.retire_s, self.retire, lease)
        return lease

    def release(self, taken: Taken, input_tokens: int, output_tokens: int) -> None:
        """A request ended having used these tokens. While its lease is open, its slot
        and unused tokens go back to the lease (an overrun takes more); after the
        lease settled, it settles its own share."""
        lease = taken.lease
        if lease.running.pop(taken.index, None) is None:
            return  # released before
        if lease.retired:
            self._settle(_own_settle(taken, input_tokens, output_tokens))
            return
        lease.input_used += input_tokens
        lease.output_used += output_tokens
        if lease.input_left is not None:
            lease.input_left += taken.input_tokens - input_tokens
        if lease.output_left is not None:
            lease.output_left += taken.output_tokens - output_tokens
        if lease.free_slots is not None:
            lease.free_slots.append(taken.index)

    def retire(self, lease: Lease) -> None:
        """No more admissions from it; it settles now, leaving its running requests
        their slot entries and reserved tokens (they settle their own as they end)."""
        if lease.retired:
            return
        lease.retired = True
        if self._open.get(lease.key) is lease:
            del self._open[lease.key]
        running = lease.running.values()
        granted = lease.reservation
        self._settle(
            pb.Settlement(
                reservation=granted,
                usage=pb.UsageRecord(
                    request_id=granted.id,
                    key_id=granted.key_id,
                    team=granted.team,
                    input_tokens=lease.input_used + sum(t.input_tokens for t in running),
                    output_tokens=lease.output_used + sum(t.output_tokens for t in running),
                ),
                part=pb.SETTLE_PART_LIMITS,
                admitted_requests=lease.admitted,
                kept_slots=sorted(lease.running) if lease.free_slots is not None else [],
            )
        )

    def retire_all(self) -> None:
        """At shutdown: settle every open lease now."""
        for lease in list(self._open.values()):
            self.retire(lease)

    @property
    def open_leases(self) -> int:
        return len(self._open)


def _own_settle(taken: Taken, input_tokens: int, output_tokens: int) -> pb.Settlement:
    """A request that outlived its lease's settle: a one-request reservation of its
    own, whose id is its slot entry, so settling it frees exactly that slot."""
    granted = taken.lease.reservation
    reservation = pb.Reservation(
        id=f"{granted.id}:{taken.index}",
        key_id=granted.key_id,
        team=granted.team,
        key_limits=granted.key_limits,
        team_limits=granted.team_limits,
        input_tokens=taken.input_tokens,
        output_tokens=taken.output_tokens,
    )
    return pb.Settlement(
        reservation=reservation,
        usage=pb.UsageRecord(
            request_id=reservation.id,
            key_id=granted.key_id,
            team=granted.team,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        ),
        part=pb.SETTLE_PART_LIMITS,
    )
