"""Batch admission rules that need no server: completion windows and priorities."""

from __future__ import annotations

import pytest

from jobs.admission import DEFAULT_PRIORITY, priority_of, window_seconds
from jobs.errors import JobsError
from jobs.limits import Limits

LIMITS = Limits()


@pytest.mark.parametrize(
    ("window", "seconds"), [("24h", 86400), ("1h", 3600), ("30m", 1800), ("90s", 90)]
)
def test_completion_windows_in_hours_minutes_and_seconds(window: str, seconds: int) -> None:
    assert window_seconds(window, LIMITS) == seconds


@pytest.mark.parametrize("window", ["25h", "0s", "0h", "1d", "h", "24", "-1h", "1.5h", " 24h"])
def test_bad_completion_windows_are_refused(window: str) -> None:
    with pytest.raises(JobsError) as info:
        window_seconds(window, LIMITS)
    assert info.value.param == "completion_window"


def test_priority_defaults_to_the_middle() -> None:
    assert priority_of(None) == priority_of({}) == DEFAULT_PRIORITY == 5
    assert priority_of({"priority": "0"}) == 0
