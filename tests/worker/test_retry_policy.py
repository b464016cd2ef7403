"""How a failed shard task is retried: never past the visibility timeout, never given up."""

from __future__ import annotations

from jobs.settings import Settings
from worker.celeryconfig import celery_config
from worker.tasks import RETRY_BACKOFF_MAX_S, retry_countdown


def test_retry_countdowns_double_and_stay_under_half_the_visibility_timeout() -> None:
    assert [retry_countdown(n, 3600) for n in range(9)] == [5, 10, 20, 40, 80, 160, 320, 600, 600]
    assert max(retry_countdown(n, 3600) for n in range(50)) == RETRY_BACKOFF_MAX_S
    # A short visibility timeout (the fault tests use 8 s): a countdown of 10 s or more
    # would be restored by the broker before it is due, and loop.
    assert [retry_countdown(n, 8) for n in range(4)] == [4, 4, 4, 4]
    assert [retry_countdown(n, 300) for n in range(7)] == [5, 10, 20, 40, 80, 150, 150]


def test_a_long_broker_outage_never_makes_the_worker_give_up() -> None:
    assert celery_config(Settings())["broker_connection_max_retries"] is None
