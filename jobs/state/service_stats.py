"""What an operator watches about the service, read from Redis when Prometheus scrapes.

    P:stats:batch_status   hash  status -> batches in it           (jobs/state/store.py keeps it)
    P:stats:finished       hash  model \\x1f tenant \\x1f field -> total over finished batches
                                 fields: batches, completed, failed, input_tokens,
                                 cached_tokens, output_tokens, duration_s
    P:stats:webhooks       hash  tenant \\x1f outcome -> webhook delivery attempts
                                 outcomes: delivered, retried, given_up
    broker queue lists     one per priority step: queue, queue\\x06\\x16{1..9} (kombu's names)

Line and token totals are added once per batch, when it ends (the finalizer's move to a
terminal status happens once), so reruns of a shard never count twice.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

import redis

from jobs.pipeline.dispatch import SENT_AT_HEADER
from jobs.settings_sections import PRIORITY_STEPS
from jobs.state.records import BatchRecord
from jobs.state.status import BatchStatus
from jobs.state.store import JobStore

FINISHED_FIELDS = (
    "completed",
    "failed",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
)
_SEP = "\x1f"
_KOMBU_PRIORITY_SEP = "\x06\x16"


@dataclass(slots=True)
class FinishedTotals:
    """Totals over finished batches, by ``(model, tenant)``."""

    values: dict[tuple[str, str], dict[str, float]] = field(
        default_factory=lambda: defaultdict(dict)
    )


class FinishedStats:
    """The per-model, per-tenant totals of finished batches."""

    def __init__(self, store: JobStore) -> None:
        self._redis = store.client
        self._key = store.key("stats", "finished")

    def record(self, batch: BatchRecord, status: BatchStatus, now: int) -> None:
        """Add a batch that just ended (``batch`` read after its last count)."""
        model, tenant = batch.model or "unknown", batch.tenant
        started = batch.timestamps.get("in_progress_at") or batch.created_at
        with self._redis.pipeline() as pipe:
            for name in FINISHED_FIELDS:
                field_name = _SEP.join((model, tenant, name))
                pipe.hincrby(self._key, field_name, batch.counters.get(name, 0))
            pipe.hincrby(self._key, _SEP.join((model, tenant, f"batches_{status.value}")), 1)
            duration = max(0, now - started)
            pipe.hincrbyfloat(self._key, _SEP.join((model, tenant, "duration_s")), duration)
            pipe.execute()

    def totals(self) -> FinishedTotals:
        raw: dict[str, str] = self._redis.hgetall(self._key)
        totals = FinishedTotals()
        for name, value in raw.items():
            model, tenant, field_name = name.split(_SEP, 2)
            totals.values[(model, tenant)][field_name] = float(value)
        return totals


WEBHOOK_OUTCOMES = ("delivered", "retried", "given_up")


class WebhookStats:
    """Webhook delivery attempts per tenant, counted by whichever worker made them so that
    the API's ``/metrics`` shows the whole deployment's (a worker's own registry would show
    only its share, and only while it lives)."""

    def __init__(self, store: JobStore) -> None:
        self._redis = store.client
        self._key = store.key("stats", "webhooks")

    def record(self, tenant: str, outcome: str) -> None:
        """Count one attempt; ``outcome`` is one of :data:`WEBHOOK_OUTCOMES`."""
        assert outcome in WEBHOOK_OUTCOMES, outcome
        self._redis.hincrby(self._key, _SEP.join((tenant, outcome)), 1)

    def totals(self) -> dict[tuple[str, str], int]:
        """Attempts by ``(tenant, outcome)``."""
        raw: dict[str, str] = self._redis.hgetall(self._key)
        totals = {}
        for name, value in raw.items():
            tenant, outcome = name.split(_SEP, 1)
            totals[(tenant, outcome)] = int(value)
        return totals


@dataclass(slots=True)
class QueueDepth:
    queued: dict[int, int]  # priority -> shard messages waiting
    oldest_age_s: float | None  # of the oldest message that carries its send time


class QueueProbe:
    """Reads the broker's queue lists directly: Celery has no cheap "how many are waiting"."""

    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self._redis = client
        self._prefix = key_prefix

    def close(self) -> None:
        self._redis.close()

    def _list_key(self, queue: str, priority: int) -> str:
        name = f"{queue}{_KOMBU_PRIORITY_SEP}{priority}" if priority else queue
        return f"{self._prefix}{name}"

    def depth(self, queue: str, now: float) -> QueueDepth:
        keys = [self._list_key(queue, p) for p in PRIORITY_STEPS]
        with self._redis.pipeline() as pipe:
            for key in keys:
                pipe.llen(key)
                pipe.lindex(key, -1)  # messages are pushed left and popped right
            replies = pipe.execute()
        queued, ages = {}, []
        for priority, (length, tail) in zip(
            PRIORITY_STEPS, zip(replies[::2], replies[1::2], strict=True), strict=True
        ):
            queued[priority] = int(length)
            sent_at = _sent_at(tail)
            if sent_at is not None:
                ages.append(max(0.0, now - sent_at))
        return QueueDepth(queued, max(ages) if ages else None)


def _sent_at(raw: str | bytes | None) -> float | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)["headers"][SENT_AT_HEADER]
        return float(value)
    except (ValueError, KeyError, TypeError):
        return None
