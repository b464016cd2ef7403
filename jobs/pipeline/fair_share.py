"""Fair share across tenants: shards wait in per-tenant queues and reach the broker in turns.

Without it, intake pushes every shard straight onto the broker's FIFO list of its priority,
and one tenant's 20 queued batches sit in front of another tenant's single batch. With it::

    intake ──► P:fair:{lane}:q:{prio}:{tenant}  (one list per tenant)  ──pump──►  broker list {prio}
                      P:fair:{lane}:ready:{prio}  zset tenant -> shards released so far

Each model's shard queue is its own lane (:class:`ModelFairQueues`): turns are taken among
the tenants of one model, and one model's backlog never fills another's window. The lanes
ever used are remembered in Redis (``P:fair:lanes``), so any process's pump releases every
lane's shards, including those of a model this process does not serve.

``pump`` keeps at most ``fair_share_window`` messages waiting in each broker list; to fill
a free place it takes the next shard of the **least-served** tenant with shards waiting at
the most urgent priority (start-time fair queuing over released shards, ties by name).
A tenant that arrives idle joins at ``min(ready) - fair_share_burst`` (never below its own
count), so a quiet tenant's small batch goes straight to the front, while a backlog can be
jumped by at most ``fair_share_burst`` shards per arrival and two busy tenants alternate.

Pumps run after intake queues a batch, when a worker takes a shard (and again when its task
ends), and with the periodic sweep. Since every take refills the list it came from, the
window only has to cover the moment between a worker taking a message and its pump: a small
one (2) keeps the broker's FIFO from deciding the order, while a large one lets a backlog
queued there first run ahead of every later tenant, as if there were no turns at all.
Each step is one Lua script, so concurrent pumps never release a shard twice; a shard lost
between the step and its broker message is sent again by the watchdog (jobs/pipeline/watchdog.py).
The watchdog also sends a shard held here longer than its silence (twice the visibility
timeout): that shard then runs out of turn, and its later release finds it done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from pydantic import BaseModel, ConfigDict, Field

from jobs.pipeline.dispatch import ShardDispatcher
from jobs.state.service_stats import QueueProbe

if TYPE_CHECKING:  # jobs/settings.py holds this module's FairShareSettings as a section
    from jobs.settings import Settings

# KEYS tenant queue, ready zset, served hash; ARGV tenant, burst, items...
_ENQUEUE = """
for i = 3, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
local served = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  local lowest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  local score = served
  if lowest[2] then score = math.max(served, tonumber(lowest[2]) - tonumber(ARGV[2])) end
  redis.call('ZADD', KEYS[2], score, ARGV[1])
end
return redis.call('LLEN', KEYS[1])
"""
# KEYS ready zset, served hash; ARGV the tenant queues' key prefix. Pops one shard of the
# least-served ready tenant; returns {tenant, item} or nil.
_NEXT = """
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if not head[1] then return nil end
local tenant, score = head[1], tonumber(head[2])
local queue = ARGV[1] .. tenant
local item = redis.call('LPOP', queue)
redis.call('HSET', KEYS[2], tenant, score + 1)
if item and redis.call('LLEN', queue) > 0 then
  redis.call('ZADD', KEYS[1], score + 1, tenant)
else
  redis.call('ZREM', KEYS[1], tenant)
end
if not item then return nil end
return {tenant, item}
"""


class FairShareSettings(BaseModel):
    """The ``fair_share`` section of the settings (jobs/settings.py)."""

    model_config = ConfigDict(extra="ignore")

    # Messages kept waiting in each broker priority list; 0 sends every shard at once (FIFO).
    # Each shard a worker takes is replaced at once, so a couple cover the take-to-pump gap.
    fair_share_window: int = Field(default=2, ge=0)
    fair_share_burst: int = Field(default=8, ge=0)


PRIORITY_STEPS = range(10)  # the broker's priority lists, most urgent first
Sender = Callable[[str, int, int], object]  # (batch_id, shard_index, priority)


class FairQueue:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        send: Sender,
        queued: Callable[[], dict[int, int]],
        settings: FairShareSettings,
        lane: str = "",
    ) -> None:
        self._redis: Any = client
        # One lane per broker queue (each model's), its keys under P:fair:{lane}:...
        self._prefix = ":".join(filter(None, (prefix.rstrip(":"), "fair", lane)))
        self._send = send
        self._queued = queued
        self.settings = settings
        self._enqueue = self._redis.register_script(_ENQUEUE)
        self._next = self._redis.register_script(_NEXT)

    def _key(self, *parts: object) -> str:
        return ":".join((self._prefix, *map(str, parts)))

    def submit(self, tenant: str, batch_id: str, num_shards: int, priority: int) -> None:
        """Queue a batch's shards for its tenant, then release what fits (or send at once)."""
        if self.settings.fair_share_window == 0:
            for index in range(num_shards):
                self._send(batch_id, index, priority)
            return
        items = [f"{batch_id}/{index}" for index in range(num_shards)]
        for start in range(0, len(items), 1000):
            keys = [
                self._key("q", priority, tenant),
                self._key("ready", priority),
                self._key("served", priority),
            ]
            args: list[str | int] = [tenant, self.settings.fair_share_burst]
            args += items[start : start + 1000]
            self._enqueue(keys=keys, args=args)
        self.pump()

    def pump(self) -> int:
        """Release shards into every broker list with room; returns how many were sent."""
        window = self.settings.fair_share_window
        if window == 0:
            return 0
        queued = self._queued()
        sent = 0
        for priority in PRIORITY_STEPS:
            for _ in range(max(0, window - queued.get(priority, 0))):
                keys = [self._key("ready", priority), self._key("served", priority)]
                picked = self._next(keys=keys, args=[self._key("q", priority, "")])
                if not picked:
                    break
                batch_id, _, index = picked[1].rpartition("/")
                self._send(batch_id, int(index), priority)
                sent += 1
        return sent

    def waiting(self, priority: int) -> dict[str, int]:
        """Shards still held back per tenant at ``priority`` (for tests and stats)."""
        tenants = self._redis.zrange(self._key("ready", priority), 0, -1)
        return {t: int(self._redis.llen(self._key("q", priority, t))) for t in tenants}


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
