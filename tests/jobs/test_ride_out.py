"""A worker's Redis client rides out an outage, until the worker, stopping, ends the ride-out:
then a command already riding one out on another thread gives up too, instead of holding
the worker's shutdown for up to ``redis_ride_out_s``."""

from __future__ import annotations

import threading
import time

import redis

from infra.harness.redis_server import free_port
from jobs.connections import end_ride_out, open_redis
from jobs.settings import Settings


def test_ending_the_ride_out_stops_a_command_already_riding_one_out() -> None:
    settings = Settings.from_flat(
        {"redis_url": f"redis://127.0.0.1:{free_port()}/0", "redis_ride_out_s": 30}
    )
    client = open_redis(settings)
    outcome: list[tuple[str, float]] = []

    def ride_out() -> None:
        try:
            client.ping()
            outcome.append(("answered", time.monotonic()))
        except redis.ConnectionError:
            outcome.append(("gave up", time.monotonic()))

    thread = threading.Thread(target=ride_out, daemon=True)
    thread.start()
    time.sleep(1.5)
    assert thread.is_alive(), "the command rides out the outage"
    ended_at = time.monotonic()
    end_ride_out(client)
    thread.join(timeout=10)
    assert [what for what, _ in outcome] == ["gave up"]
    assert outcome[0][1] - ended_at < 4  # its next attempt: the backoff is capped at 2 s
    client.close()
