"""Least outstanding requests, and the circuit breaker around each replica."""

from __future__ import annotations

from services.inference.balancer import Balancer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_picks_the_replica_with_fewest_outstanding_requests() -> None:
    balancer = Balancer(["a", "b", "c"])
    first, second, third = (balancer.acquire() for _ in range(3))
    assert {r.target for r in (first, second, third) if r} == {"a", "b", "c"}
    assert first is not None and second is not None
    balancer.release(first)
    again = balancer.acquire()
    assert again is first  # the only one with nothing outstanding
    assert [r.outstanding for r in balancer.replicas].count(1) == 3


def test_equal_loads_take_turns() -> None:
    balancer = Balancer(["a", "b"])
    picks = []
    for _ in range(4):
        replica = balancer.acquire()
        assert replica is not None
        picks.append(replica.target)
        balancer.release(replica)
    assert sorted(picks) == ["a", "a", "b", "b"]


def test_excluded_replicas_are_not_picked_and_none_is_left_at_the_end() -> None:
    balancer = Balancer(["a", "b"])
    one = balancer.acquire()
    assert one is not None
    two = balancer.acquire([one])
    assert two is not None and two is not one
    assert balancer.acquire([one, two]) is None


def test_failures_in_a_row_eject_then_a_probe_brings_it_back() -> None:
    clock = Clock()
    balancer = Balancer(["a", "b"], eject_after=2, cooldown_s=5, clock=clock)
    a, b = balancer.replicas
    balancer.failed(a)
    balancer.succeeded(a)  # a success resets the count
    balancer.failed(a)
    assert a.ejected_until == 0
    balancer.failed(a)
    assert a.ejected_until == 105
    for _ in range(3):  # ejected: only b is picked, however loaded
        assert balancer.acquire() is b
    clock.now = 105.5
    probe = balancer.acquire()
    assert probe is a and a.probing
    assert balancer.acquire() is b  # one probe at a time
    balancer.succeeded(a)
    balancer.release(a)
    assert a.ejected_until == 0 and not a.probing
    assert balancer.acquire() is a  # back in rotation (fewest outstanding)


def test_a_failed_probe_ejects_again_at_once() -> None:
    clock = Clock()
    balancer = Balancer(["a"], eject_after=3, cooldown_s=5, clock=clock)
    (a,) = balancer.replicas
    for _ in range(3):
        balancer.failed(a)
    assert balancer.acquire() is None
    clock.now = 106
    assert balancer.acquire() is a
    balancer.failed(a)
    balancer.release(a)
    assert a.ejected_until == 111
    assert balancer.acquire() is None


def test_an_abandoned_probe_lets_another_probe_through() -> None:
    clock = Clock()
    balancer = Balancer(["a"], eject_after=1, cooldown_s=1, clock=clock)
    (a,) = balancer.replicas
    balancer.failed(a)
    clock.now = 102
    assert balancer.acquire() is a
    balancer.abandoned(a)
    balancer.release(a)
    assert balancer.acquire() is a


def test_circuit_state_and_totals_follow_ejection_and_probe() -> None:
    clock = Clock()
    balancer = Balancer(["a"], eject_after=2, cooldown_s=10, clock=clock)
    replica = balancer.replicas[0]
    for _ in range(2):
        picked = balancer.acquire()
        assert picked is replica
        balancer.failed(replica)
        balancer.release(replica)
    assert balancer.state(replica) == "open" and replica.ejections == 1
    clock.now += 10
    assert balancer.state(replica) == "half_open"
    probe = balancer.acquire()
    assert probe is replica
    balancer.failed(replica)  # the probe fails: ejected again
    balancer.release(replica)
    assert balancer.state(replica) == "open" and replica.ejections == 2
    clock.now += 10
    assert balancer.acquire() is replica
    balancer.succeeded(replica)
    assert balancer.state(replica) == "closed"
    assert (replica.attempts, replica.failed_total, replica.ejections) == (4, 3, 2)
