"""`make run`'s restart policy: a backoff that doubles, and a limit on crash loops."""

from __future__ import annotations

from scripts.run import CRASH_WINDOW_S, MAX_CRASHES, RESTART_BACKOFF_MAX_S, Restarts


def test_backoff_doubles_with_each_recent_crash_up_to_its_cap() -> None:
    restarts = Restarts()
    delays = [restarts.delay(now=float(i)) for i in range(MAX_CRASHES)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0][:MAX_CRASHES]
    assert all(d is not None and d <= RESTART_BACKOFF_MAX_S for d in delays)


def test_one_crash_too_many_within_the_window_gives_up() -> None:
    restarts = Restarts()
    for i in range(MAX_CRASHES):
        assert restarts.delay(now=float(i)) is not None
    assert restarts.delay(now=float(MAX_CRASHES)) is None


def test_crashes_long_ago_are_forgotten() -> None:
    restarts = Restarts()
    for i in range(MAX_CRASHES):
        restarts.delay(now=float(i))
    assert restarts.delay(now=MAX_CRASHES + CRASH_WINDOW_S) == 0.5  # a fresh start
