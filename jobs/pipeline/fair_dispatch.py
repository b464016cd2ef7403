"""The fair queue as a process builds it from the service settings (API intake, workers)."""

from __future__ import annotations

import time

import redis

from jobs.pipeline.dispatch import ShardDispatcher
from jobs.pipeline.fair_share import FairQueue
from jobs.service_settings import ServiceSettings
from jobs.state.service_stats import QueueProbe


def open_fair_queue(
    settings: ServiceSettings, client: redis.Redis, dispatcher: ShardDispatcher
) -> FairQueue:
    """Shards go out through ``dispatcher``; broker lists are read on the broker's Redis."""
    broker = settings.resolved_broker_url
    probe = None
    if broker.startswith(("redis://", "rediss://", "unix://")):
        probe_client = redis.Redis.from_url(broker, decode_responses=True)
        probe = QueueProbe(probe_client, settings.resolved_broker_key_prefix)

    def queued() -> dict[int, int]:
        # Another broker: no lists to read, so each pump sends up to a window.
        return probe.depth(settings.shard_queue, time.time()).queued if probe else {}

    def send(batch_id: str, index: int, priority: int) -> None:
        dispatcher.dispatch(batch_id, index, priority)

    return FairQueue(client, settings.key_prefix, send, queued, settings)
