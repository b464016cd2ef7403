"""Fair share: the order shards reach the broker, on the real Redis (a list stands for the
broker's queue, drained one message at a time as a busy worker would)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis

from jobs.pipeline.fair_share import FairQueue, FairShareSettings


class Broker:
    def __init__(self) -> None:
        self.queue: list[tuple[str, int, int]] = []

    def send(self, batch_id: str, index: int, priority: int) -> None:
        self.queue.append((batch_id, index, priority))

    def queued(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for _, _, priority in self.queue:
            counts[priority] = counts.get(priority, 0) + 1
        return counts


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    yield client
    client.close()


def fair(client: redis.Redis, broker: Broker, **settings: int) -> Iterator[FairQueue]:
    prefix = f"kvbatch-test-fair-{secrets.token_hex(4)}"
    yield FairQueue(
        client, prefix, broker.send, broker.queued, FairShareSettings.model_validate(settings)
    )
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)


def drain(queue: FairQueue, broker: Broker) -> list[str]:
    """Take messages as the broker hands them out (most urgent priority first, FIFO within
    one), pumping after each as a worker finishing a shard does."""
    order = []
    while broker.queue:
        first = min(range(len(broker.queue)), key=lambda i: broker.queue[i][2])
        batch_id, _, _ = broker.queue.pop(first)
        order.append(batch_id)
        queue.pump()
    return order


def test_a_quiet_tenants_batch_does_not_wait_behind_a_backlog(client: redis.Redis) -> None:
    broker = Broker()
    for queue in fair(client, broker, fair_share_window=2, fair_share_burst=8):
        for n in range(10):
            queue.submit("tenant-a", f"a{n}", 4, priority=5)
        queue.submit("tenant-b", "b", 4, priority=5)
        assert queue.waiting(5) == {"tenant-a": 38, "tenant-b": 4}
        order = drain(queue, broker)
        assert len(order) == 44 and order.count("b") == 4
        # Behind the window already in the broker; b joins level with a (a had 2 shards
        # out), so b's first two go next and then the two alternate: b is not behind 40.
        assert [i for i, name in enumerate(order) if name == "b"] == [2, 3, 5, 7]


def test_busy_tenants_alternate_and_urgent_priorities_go_first(client: redis.Redis) -> None:
    broker = Broker()
    for queue in fair(client, broker, fair_share_window=1, fair_share_burst=0):
        queue.submit("tenant-a", "a", 6, priority=5)
        queue.submit("tenant-b", "b", 6, priority=5)
        queue.submit("tenant-c", "urgent", 2, priority=1)
        order = drain(queue, broker)
        assert order[:2] == ["urgent", "urgent"], "priority 1 first"
        # a0 was already in the broker when b came; from then on they take turns.
        assert order[2:] == ["a", "a", "b", "a", "b", "a", "b", "a", "b", "a", "b", "b"]


def test_window_zero_sends_everything_at_once(client: redis.Redis) -> None:
    broker = Broker()
    for queue in fair(client, broker, fair_share_window=0):
        queue.submit("tenant-a", "a", 3, priority=5)
        assert [index for _, index, _ in broker.queue] == [0, 1, 2]
        assert queue.pump() == 0
