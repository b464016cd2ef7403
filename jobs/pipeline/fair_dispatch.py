"""The fair queues as a process builds them from the service settings (API intake, workers).

Each model's shard queue is a lane with its own fair queue: tenants take turns within a
model, and each lane's window is measured on its own broker queue. The lanes ever used are
remembered in Redis (``P:fair:lanes``), so any process's pump releases every lane's shards,
including those of a model this process does not serve.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from jobs.pipeline.dispatch import ShardDispatcher
from jobs.pipeline.fair_share import FairQueue
from jobs.settings import Settings
from jobs.state.service_stats import QueueProbe


class ModelFairQueues:
    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        dispatcher: ShardDispatcher,
        probe: QueueProbe | None,
    ) -> None:
        self.settings = settings
        self._redis: Any = client
        self._dispatcher = dispatcher
        self._probe = probe
        self._lanes_key = f"{settings.redis.key_prefix.rstrip(':')}:fair:lanes"
        self._lanes: dict[str, FairQueue] = {}

    def lane(self, queue: str) -> FairQueue:
        """The fair queue feeding broker queue ``queue``."""
        if queue not in self._lanes:

            def queued() -> dict[int, int]:
                # Another broker: no lists to read, so each pump sends up to a window.
                return self._probe.depth(queue, time.time()).queued if self._probe else {}

            def send(batch_id: str, index: int, priority: int) -> None:
                self._dispatcher.send_to(queue, batch_id, index, priority)

            self._lanes[queue] = FairQueue(
                self._redis,
                self.settings.redis.key_prefix,
                send,
                queued,
                self.settings.fair_share,
                lane=queue,
            )
        return self._lanes[queue]

    def submit(
        self, tenant: str, batch_id: str, num_shards: int, priority: int, model: str
    ) -> None:
        """Queue a batch's shards in its model's lane, then release what fits."""
        queue = self._dispatcher.router.queue_of(model)
        self._redis.sadd(self._lanes_key, queue)
        self.lane(queue).submit(tenant, batch_id, num_shards, priority)

    def pump(self) -> int:
        """Release shards into every lane's broker queue with room; returns how many."""
        lanes = sorted(self._redis.smembers(self._lanes_key))
        return sum(self.lane(queue).pump() for queue in lanes)


def open_fair_queues(
    settings: Settings, client: redis.Redis, dispatcher: ShardDispatcher
) -> ModelFairQueues:
    """Shards go out through ``dispatcher``; broker lists are read on the broker's Redis."""
    broker = settings.redis.resolved_broker_url
    probe = None
    if broker.startswith(("redis://", "rediss://", "unix://")):
        probe_client = redis.Redis.from_url(broker, decode_responses=True)
        probe = QueueProbe(probe_client, settings.redis.resolved_broker_key_prefix)
    return ModelFairQueues(settings, client, dispatcher, probe)
