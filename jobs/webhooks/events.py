"""Webhook events of ended batches: built once, kept in Redis until delivered.

    batch ends ─► P:ended (same step as its status move, jobs/state/store.py)
        └─ collect (periodic task) ─► P:webhook:{event id} hash ─► deliver task(s)

An event's id is derived from its batch and type, so whatever runs twice (a collect that
died before clearing P:ended, a redelivered task) sends the same ``webhook-id``, which is
how a Standard Webhooks receiver recognises a duplicate. The body is OpenAI's::

    {"id": "evt_...", "object": "event", "type": "batch.completed",
     "created_at": 1700000000, "data": {"id": "batch_..."}}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from jobs.state.records import BatchRecord
from jobs.state.status import BatchStatus
from jobs.state.store import JobStore
from jobs.webhooks.settings import WebhookSettings

EVENT_TYPES = {
    BatchStatus.COMPLETED: "batch.completed",
    BatchStatus.FAILED: "batch.failed",
    BatchStatus.EXPIRED: "batch.expired",
    BatchStatus.CANCELLED: "batch.cancelled",
}
EVENT_TTL_S = 4 * 24 * 3600  # beyond the longest retry window


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    id: str
    tenant: str
    url: str
    body: str
    first_at: float  # when it was built: retries stop ``webhook_retry_for_s`` after it
    delivered: bool = False


def webhook_url_of(batch: BatchRecord, settings: WebhookSettings) -> str | None:
    """The batch's own endpoint (if settings allow one) or its tenant's, if any."""
    own = (batch.metadata or {}).get("webhook_url")
    if own and settings.webhook_metadata_url:
        return own
    return settings.webhook_urls.get(batch.tenant)


class WebhookOutbox:
    def __init__(self, store: JobStore, settings: WebhookSettings) -> None:
        self.store = store
        self.settings = settings
        self._redis: Any = store.client

    def _key(self, event_id: str) -> str:
        return self.store.key("webhook", event_id)

    def collect(self, now: float) -> list[str]:
        """Events for every batch that ended since the last call; ids still to deliver."""
        pending = []
        ended = self.store.key("ended")
        for batch_id in self._redis.smembers(ended):
            batch = self.store.load_batch(batch_id)
            event = self._event(batch, now) if batch is not None else None
            if event is not None and self._keep(event):
                pending.append(event.id)
            self._redis.srem(ended, batch_id)
        return pending

    def _event(self, batch: BatchRecord, now: float) -> WebhookEvent | None:
        url = webhook_url_of(batch, self.settings)
        event_type = EVENT_TYPES.get(batch.status)
        if url is None or event_type is None or batch.tenant not in self.settings.webhook_secrets:
            return None
        digest = hashlib.sha256(f"{batch.id}/{event_type}".encode()).hexdigest()[:32]
        event_id = f"evt_{digest}"
        body = {
            "id": event_id,
            "object": "event",
            "type": event_type,
            "created_at": int(now),
            "data": {"id": batch.id},
        }
        return WebhookEvent(event_id, batch.tenant, url, json.dumps(body), now)

    def _keep(self, event: WebhookEvent) -> bool:
        """Store the event unless it is already stored; True while it is undelivered."""
        key = self._key(event.id)
        fields = {
            "tenant": event.tenant,
            "url": event.url,
            "body": event.body,
            "first_at": repr(event.first_at),
        }
        if self._redis.hsetnx(key, "id", event.id):
            self._redis.hset(key, mapping=fields)
            self._redis.expire(key, EVENT_TTL_S)
            return True
        stored = self.load(event.id)
        return stored is not None and not stored.delivered

    def load(self, event_id: str) -> WebhookEvent | None:
        raw = self._redis.hgetall(self._key(event_id))
        if not raw or "body" not in raw:
            return None
        return WebhookEvent(
            raw["id"],
            raw["tenant"],
            raw["url"],
            raw["body"],
            float(raw["first_at"]),
            delivered=bool(raw.get("delivered_at")),
        )

    def mark_delivered(self, event_id: str, now: float) -> None:
        self._redis.hset(self._key(event_id), "delivered_at", repr(now))
