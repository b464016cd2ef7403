"""Which workers are alive and what each serves, kept by their heartbeats in Redis.

    P:registry             zset  hostname -> when its registration lapses (unix seconds)
    P:registry:{hostname}  JSON  WorkerInfo, with the same time to live

A worker registers when it starts and again on every stats tick (worker/monitoring.py), so
its entry lapses a few ticks after it dies; a clean shutdown removes it at once. The API
reads the live entries for ``GET /v1/models`` and for a batch waiting on a model no
worker serves.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What one worker serves and how much of it."""

    hostname: str
    model: str  # the served model name (its shard queue: jobs/pipeline/routing.py)
    device: str
    max_num_seqs: int
    max_model_len: int | None  # None: the model's own context length
    adapters: list[str] = field(default_factory=list)  # the LoRA adapters it can run


class WorkerRegistry:
    def __init__(
        self, client: redis.Redis, prefix: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._redis: Any = client
        self._key = f"{prefix.rstrip(':')}:registry"
        self._clock = clock

    def register(self, info: WorkerInfo, ttl_s: float) -> None:
        """Announce ``info`` for the next ``ttl_s`` seconds (call again before they pass)."""
        with self._redis.pipeline() as pipe:
            pipe.set(f"{self._key}:{info.hostname}", json.dumps(asdict(info)), px=int(ttl_s * 1000))
            pipe.zadd(self._key, {info.hostname: self._clock() + ttl_s})
            pipe.execute()

    def unregister(self, hostname: str) -> None:
        with self._redis.pipeline() as pipe:
            pipe.delete(f"{self._key}:{hostname}")
            pipe.zrem(self._key, hostname)
            pipe.execute()

    def live(self) -> list[WorkerInfo]:
        """Every worker whose registration has not lapsed; lapsed ones are forgotten."""
        now = self._clock()
        self._redis.zremrangebyscore(self._key, "-inf", now)
        hostnames = self._redis.zrangebyscore(self._key, now, "+inf")
        if not hostnames:
            return []
        raw = self._redis.mget([f"{self._key}:{name}" for name in hostnames])
        return [WorkerInfo(**json.loads(text)) for text in raw if text is not None]

    def workers_by_model(self) -> Counter[str]:
        """Live workers per served model name."""
        return Counter(info.model for info in self.live())
