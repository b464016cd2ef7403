"""Batch admission rules that need no server: completion windows and priorities (with the
per-tenant ranges the API's settings hold)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs.errors import JobsError
from jobs.limits import Limits
from jobs.pipeline.admission import DEFAULT_PRIORITY, check_metadata, priority_of, window_seconds
from jobs.settings import Settings

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


def test_priority_zero_needs_a_tenant_range_that_grants_it() -> None:
    settings = Settings.from_flat({"tenant_priorities": "ops=0-9,batchy=3-5"})
    assert settings.api.priorities_of("anyone") == range(1, 10)
    assert settings.api.priorities_of("ops") == range(10)
    with pytest.raises(JobsError) as info:
        check_metadata({"priority": "0"}, LIMITS, settings.api.priorities_of("anyone"))
    assert info.value.param == "metadata.priority" and "1-9" in info.value.message
    check_metadata({"priority": "0"}, LIMITS, settings.api.priorities_of("ops"))
    with pytest.raises(JobsError):
        check_metadata({"priority": "7"}, LIMITS, settings.api.priorities_of("batchy"))
    check_metadata({"priority": "4"}, LIMITS, settings.api.priorities_of("batchy"))


@pytest.mark.parametrize("text", ["0-10", "5-3", "high", "1"])
def test_bad_priority_ranges_are_refused_at_start(text: str) -> None:
    with pytest.raises(ValidationError):
        Settings.from_flat({"tenant_priorities": f"t={text}"})
