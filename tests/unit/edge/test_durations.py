"""The `x-ratelimit-reset-*` durations, in OpenAI's format."""

from __future__ import annotations

import pytest

from edge.errors import duration


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0ms"),
        (-1, "0ms"),
        (0.02, "20ms"),
        (0.9994, "999ms"),
        (0.9996, "1s"),  # not "1000ms"
        (1.5, "1.5s"),
        (59.94, "59.9s"),
        (59.96, "1m0s"),  # not "60s"
        (119.7, "2m0s"),  # not "1m60s"
        (360, "6m0s"),
        (3725, "62m5s"),
    ],
)
def test_reset_durations_round_once_at_the_unit_shown(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown
