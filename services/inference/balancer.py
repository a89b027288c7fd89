"""Which replica serves the next request: least outstanding, minus the ejected.

Passive health, as a circuit breaker per replica: `eject_after` failures in a
row (refused connections, 5xx, broken streams, timeouts) eject the replica for
`cooldown_s`. After the cool-down one request at a time is let through as a
probe; its success brings the replica back, its failure ejects it again.
Pure bookkeeping: no I/O, the clock is injectable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class Replica(Generic[T]):
    target: T
    outstanding: int = 0
    failures: int = 0  # consecutive
    ejected_until: float = 0.0
    probing: bool = False  # a probe is in flight after the cool-down
    # Totals for metrics (read when scraped).
    attempts: int = 0
    failed_total: int = 0
    ejections: int = 0


class Balancer(Generic[T]):
    def __init__(
        self,
        targets: Sequence[T],
        eject_after: int = 3,
        cooldown_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.replicas = [Replica(t) for t in targets]
        self.eject_after = max(1, eject_after)
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._turn = 0  # rotates the tie-break so equal loads take turns

    def acquire(self, exclude: Collection[Replica[T]] = ()) -> Replica[T] | None:
        """The replica for the next attempt (its load counted), or None if none may take it."""
        now = self.clock()
        best: Replica[T] | None = None
        probe: Replica[T] | None = None
        count = len(self.replicas)
        self._turn = (self._turn + 1) % count
        for offset in range(count):
            replica = self.replicas[(self._turn + offset) % count]
            if replica in exclude:
                continue
            if replica.ejected_until:
                if replica.ejected_until <= now and not replica.probing and probe is None:
                    probe = replica  # cool-down over: may be probed
                continue
            elif best is None or replica.outstanding < best.outstanding:
                best = replica
        # A replica whose cool-down is over gets the next request as its probe,
        # so a recovered replica comes back even while the others are healthy.
        if probe is not None:
            probe.probing = True
            chosen = probe
        elif best is not None:
            chosen = best
        else:
            return None
        chosen.outstanding += 1
        chosen.attempts += 1
        return chosen

    def release(self, replica: Replica[T]) -> None:
        replica.outstanding -= 1

    def succeeded(self, replica: Replica[T]) -> None:
        replica.failures = 0
        replica.ejected_until = 0.0
        replica.probing = False

    def failed(self, replica: Replica[T]) -> None:
        replica.failures += 1
        replica.failed_total += 1
        if replica.probing or replica.failures >= self.eject_after:
            if not replica.ejected_until or replica.probing:
                replica.ejections += 1
            replica.ejected_until = self.clock() + self.cooldown_s
        replica.probing = False

    def state(self, replica: Replica[T]) -> str:
        """The replica's circuit: closed (serving), open (ejected) or half_open
        (cool-down over: the next request probes it)."""
        if not replica.ejected_until:
            return "closed"
        return "half_open" if replica.ejected_until <= self.clock() else "open"

    def abandoned(self, replica: Replica[T]) -> None:
        """The attempt ended without a verdict (the caller went away)."""
        replica.probing = False
