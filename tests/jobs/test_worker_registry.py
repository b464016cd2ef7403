"""The worker registry on a real Redis: registrations live for their TTL, then lapse."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis

from jobs.state.worker_registry import WorkerInfo, WorkerRegistry


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts() -> Iterator[tuple[redis.Redis, str]]:
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    prefix = f"kvbatch-test-registry-{secrets.token_hex(4)}"
    yield client, prefix
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


def info(hostname: str, model: str) -> WorkerInfo:
    return WorkerInfo(hostname, model, "cpu", max_num_seqs=64, max_model_len=None)


def test_live_workers_are_counted_by_model_until_their_heartbeat_lapses(
    parts: tuple[redis.Redis, str],
) -> None:
    clock = Clock(1000.0)
    registry = WorkerRegistry(*parts, clock)
    registry.register(info("w1", "a"), ttl_s=30)
    registry.register(info("w2", "a"), ttl_s=30)
    registry.register(info("w3", "b"), ttl_s=10)
    assert registry.workers_by_model() == {"a": 2, "b": 1}
    assert info("w3", "b") in registry.live()
    clock.now += 20  # w3 missed its heartbeats
    assert registry.workers_by_model() == {"a": 2}
    registry.register(info("w1", "a"), ttl_s=30)  # a heartbeat renews it
    clock.now += 15
    assert registry.workers_by_model() == {"a": 1}
    registry.unregister("w1")  # a clean shutdown
    assert registry.workers_by_model() == {}
